"""Argument types for the command line: a bad value stops argparse with the argument's name and what it
allows (``argument --stations: must be a whole number >= 1, got '0'``), never a traceback."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def whole(low: int, high: int | None = None) -> Callable[[str], int]:
    """A whole number within ``low``..``high`` (no upper bound when ``high`` is None)."""
    allowed = f"a whole number >= {low}" if high is None else f"a whole number within {low}..{high}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text!r}")
        return value

    parse.__name__ = "whole number"  # argparse names the type in its own messages
    return parse


def number(low: float, high: float | None = None, *, above: bool = False) -> Callable[[str], float]:
    """A number >= ``low`` (> ``low`` when ``above``), and <= ``high`` when given."""
    floor = f"> {low:g}" if above else f">= {low:g}"
    allowed = f"a number {floor}" if high is None else f"a number within {low:g}..{high:g}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text!r}") from None
        if not value == value or value < low or (above and value == low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text!r}")
        return value

    parse.__name__ = "number"
    return parse


port = whole(0, 65535)
