"""Durations as people write them in YAML and on the command line: ``30s``, ``5m``, ``1.5h``,
``250ms``, ``72h``, ``1d``, and Go's ``time.ParseDuration`` syntax, as Argo CD, Flux and
kubectl take them: ``1h30m``, ``2m30.5s``, ``1h0m0s``, ``500us``. A bare number is seconds.
Pure.

Not ``durationpy.from_str``: it checks only that the parts start and end the text (so
``1h 30m`` passes), adds weeks, months and years that Go has not, rounds below a microsecond
to zero and refuses a bare number.
"""

from __future__ import annotations

import re
from typing import Any

_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,  # Go's spelling (U+00B5), and the Greek mu (U+03BC) it also accepts
    "μs": 1e-6,
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,  # not Go's, but what a TTL of days is written as here
}
_NUMBER = r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+"
_PART = re.compile(rf"({_NUMBER})(ns|us|µs|μs|ms|s|m|h|d)")
_BARE = re.compile(rf"^(?:{_NUMBER})$")


def parse_duration(value: Any) -> float | None:
    """Seconds, or None when ``value`` is not a positive duration."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if value > 0 else None
    text = str(value).strip()
    if _BARE.match(text):
        seconds = float(text)
    else:
        parts = list(_PART.finditer(text))
        # The parts must cover the text exactly: "1h30" or "1h 30m" is no duration.
        if not parts or "".join(p.group(0) for p in parts) != text:
            return None
        seconds = sum(float(p.group(1)) * _UNITS[p.group(2)] for p in parts)
    return seconds if seconds > 0 else None
