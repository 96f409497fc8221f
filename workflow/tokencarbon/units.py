"""The one place unit constants live: SI units in data, conversions only through these names.

Sources: SI brochure (9th ed., 2019) for the prefixes; 1 kWh = 1000 W x 3600 s = 3.6e6 J.
Datasheet memory sizes and bandwidths (GB, GB/s, TB/s) are decimal, as NVIDIA and AMD print them.
"""

from __future__ import annotations

NS_PER_S = 1_000_000_000
NS_PER_MS = 1_000_000
S_PER_HOUR = 3600
NS_PER_HOUR = S_PER_HOUR * NS_PER_S
S_PER_DAY = 86_400
# A year of 365 days, as in the worked example of the GSF Software Carbon Intensity specification.
S_PER_YEAR = 365 * S_PER_DAY

J_PER_KWH = 3.6e6  # 1000 W x 3600 s
MJ_PER_J = 1000.0  # millijoules (NVML's energy counter) per joule
G_PER_KG = 1000.0

BYTES_PER_GB = 1e9  # decimal gigabyte (datasheets)
BYTES_PER_GIB = 2**30  # binary gibibyte (nvidia-smi's MiB and torch's memory figures are binary)
BYTES_PER_MIB = 2**20
FLOPS_PER_TFLOPS = 1e12


def energy_kwh(energy_j):
    """Joules (float or numpy array) to kilowatt-hours: the one place this conversion is made."""
    return energy_j / J_PER_KWH
