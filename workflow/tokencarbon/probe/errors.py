"""The OOM probe's two exceptions: a size that does not fit (what a try reports and the search
reads), and a CPU worker process that died or failed."""

from __future__ import annotations

from tokencarbon.errors import TokencarbonError


class OutOfMemory(Exception):
    """A batch does not fit in the device's (possibly capped) memory."""


class ProbeError(TokencarbonError):
    """The probe's CPU worker process died or failed."""
