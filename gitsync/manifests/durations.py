"""Durations as people write them in YAML: ``30s``, ``5m``, ``1.5h``, ``250ms``, ``72h``. Pure."""

from __future__ import annotations

import re
from typing import Any

_DURATION = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)?$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> float | None:
    """Seconds, or None when ``value`` is not a positive duration."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if value > 0 else None
    match = _DURATION.match(str(value))
    if not match:
        return None
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    return seconds if seconds > 0 else None
