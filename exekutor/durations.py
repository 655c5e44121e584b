"""Durations as exekutor reads them: a number of seconds (or of another unit) or a string with a unit of its own
('500ms', '90s', '15m', '4h', '2d'), and the longest any option or schedule takes.

A module of its own because the configuration, the schedules and the command line all read durations, and none
of them should have to import another for it.
"""
import math
import re

UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
UNIT_NAMES = {"ms": "milliseconds", "s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
# The longest duration any option (and a schedule's `every`) takes: 100 years of 365 days, as for enqueue waits
# (exekutor.jobs.MAX_WAIT). Anything longer is a mistake, and past it timedelta and datetime arithmetic overflows.
MAX_DURATION = 100 * 365 * 24 * 3600.0
MAX_DURATION_TEXT = "100 years"
_DURATION = re.compile(r"\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?)\s*(ms|s|m|h|d)?\s*", re.IGNORECASE)


def parse_duration(value, unit="s"):
    """Seconds (or the given unit) as a float from a number in `unit` or a string like '90s', '15m', '1.5h'."""
    if unit not in UNIT_SECONDS:
        raise ValueError(f"unknown duration unit {unit!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number, suffix = to_float(value), unit
    else:
        match = _DURATION.fullmatch(value) if isinstance(value, str) else None
        if not match:
            raise ValueError(f"not a duration: {value!r}")
        number, suffix = float(match.group(1)), (match.group(2) or unit).lower()
    if not math.isfinite(number):
        raise ValueError(f"not a duration: {value!r}")
    return number * UNIT_SECONDS[suffix] / UNIT_SECONDS[unit]


def to_float(number):
    """float(number), a ValueError (not OverflowError) for an int beyond any float, e.g. 400 digits of YAML."""
    try:
        return float(number)
    except OverflowError:
        raise ValueError("number too large") from None
