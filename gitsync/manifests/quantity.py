"""Kubernetes resource quantities (``500m``, ``4Gi``, ``1e3``) as exact numbers. Pure.

Only what the preview caps need: parse, so a container's ``cpu: "2"`` can be compared with a
cap of ``500m``. The grammar is apimachinery's ``resource.Quantity`` (decimal SI, binary SI
and decimal exponent suffixes); anything else is ``None``, and the caller leaves it alone.

Not ``kubernetes.utils.parse_quantity``: it parses with ``Decimal`` and so takes ``NaN``,
``Infinity``, ``1_000`` and ``1K``, which the API server refuses, and importing it loads the
whole generated client (about 2 s) into the pure core.
"""

from __future__ import annotations

import re
from fractions import Fraction

_SCALE = {
    "n": Fraction(1, 10**9),
    "u": Fraction(1, 10**6),
    "m": Fraction(1, 1000),
    "": Fraction(1),
    "k": Fraction(10**3),
    "M": Fraction(10**6),
    "G": Fraction(10**9),
    "T": Fraction(10**12),
    "P": Fraction(10**15),
    "E": Fraction(10**18),
    "Ki": Fraction(2**10),
    "Mi": Fraction(2**20),
    "Gi": Fraction(2**30),
    "Ti": Fraction(2**40),
    "Pi": Fraction(2**50),
    "Ei": Fraction(2**60),
}
# The exponent form comes first: "1E3" is 1000, "1E" one exa.
_QUANTITY = re.compile(
    r"^(?P<number>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
    r"(?:[eE](?P<exponent>[+-]?[0-9]+)|(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?)$"
)


def parse_quantity(value: object) -> Fraction | None:
    """The quantity's exact value (cores, bytes, devices), or None when it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return Fraction(value)
    if not isinstance(value, str):
        return None
    match = _QUANTITY.match(value.strip())
    if match is None:
        return None
    number = Fraction(match["number"])
    if match["exponent"] is not None:
        return number * Fraction(10) ** int(match["exponent"])
    return number * _SCALE[match["suffix"] or ""]
