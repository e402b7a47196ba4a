"""The per-request extensions a layer reads (``extensions={"cache": {...}}``, ``{"retry": {...}}``).

Checked where the layer first reads one, before the request is sent: a misspelt key would otherwise do
nothing, silently, and a value of the wrong shape fail deep inside the layer, or after a write went
through.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def checked(name: str, value: Any, allowed: frozenset[str]) -> Mapping[str, Any]:
    """``value``, the request extension ``name``, when it is a mapping of ``allowed`` keys; else a
    ``ValueError`` naming them."""
    keys = ", ".join(sorted(allowed))
    if not isinstance(value, Mapping):
        raise ValueError(f"request extension {name} must be a dict with keys among {keys}, got {value!r}")
    unknown = [key for key in value if key not in allowed]
    if unknown:
        raise ValueError(f"request extension {name}: unknown key {unknown[0]!r}; allowed keys: {keys}")
    return value
