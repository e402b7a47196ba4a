"""Argument types for the command line: a bad value stops argparse with the argument's name and what it
allows (``argument --stations: must be a whole number >= 1, got '0'``), never a traceback."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeVar

N = TypeVar("N", int, float)


def _bounded(convert: Callable[[str], N], kind: str, low: N, high: N | None, above: bool) -> Callable[[str], N]:
    floor = f"> {low:g}" if above else f">= {low:g}"
    allowed = f"{kind} {floor}" if high is None else f"{kind} within {low:g}..{high:g}"

    def parse(text: str) -> N:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text!r}") from None
        if value != value or value < low or (above and value == low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text!r}")  # NaN fails its own equality
        return value

    parse.__name__ = kind  # argparse names the type in its own messages
    return parse


def whole(low: int, high: int | None = None) -> Callable[[str], int]:
    """A whole number within ``low``..``high`` (no upper bound when ``high`` is None)."""
    return _bounded(int, "a whole number", low, high, False)


def number(low: float, high: float | None = None, *, above: bool = False) -> Callable[[str], float]:
    """A number >= ``low`` (> ``low`` when ``above``), and <= ``high`` when given."""
    return _bounded(float, "a number", low, high, above)


port = whole(0, 65535)
