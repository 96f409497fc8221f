"""Errors that name the file, key or value at fault and what would be valid."""


class TokencarbonError(Exception):
    """Base class: every message names what is wrong and what would be valid."""


class ConfigError(TokencarbonError):
    """A configuration key or value is invalid."""


class InputError(TokencarbonError):
    """An input file (dataset, trace, log, table) is unreadable or malformed."""


class SchemaError(InputError):
    """A table does not carry the columns or dtypes its schema requires."""


class HardwareMismatchError(TokencarbonError):
    """The hardware a cell runs on is not the platform it was configured for."""
