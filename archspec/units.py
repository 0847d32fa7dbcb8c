"""Human-readable numbers for reports and messages."""
from __future__ import annotations


def human_bytes(n: float) -> str:
    """1536 -> '1.50 KiB' (binary prefixes)."""
    # up to YiB: accounting at the limits (archspec/limits.py) reaches exbibytes of state
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB"):
        if abs(n) < 1024 or unit == "YiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024


def human(n: float, unit: str = "") -> str:
    """1234567 -> '1.23M'; bytes use binary prefixes."""
    if unit == "B":
        return human_bytes(n)
    for div, suffix in ((1e24, "Y"), (1e21, "Z"), (1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"),
                        (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.2f}{suffix}"
    return f"{n:.0f}" if float(n).is_integer() else f"{n:.2f}"
