"""The order of a stack's layers: positions, ``before`` / ``after`` constraints and the user's overrides.

Only the layers one stack enables are ordered, so two installed plugins that pick the same position
matter only when a stack enables both, and then the user can settle it (``positions`` or ``order``
in the config, or a ``before`` / ``after`` on either spec).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .errors import PluginError


@dataclass(frozen=True)
class Placement:
    name: str
    position: int
    before: tuple[str, ...] = ()
    after: tuple[str, ...] = ()


def order(placements: Sequence[Placement], *, positions: Mapping[str, int] | None = None,
          explicit: Sequence[str] | None = None) -> list[tuple[str, int]]:
    """The layers outermost first, each with its effective position.

    ``explicit`` (the config's ``order``) wins outright and must name exactly the enabled layers.
    Otherwise: a stable topological order of the ``before`` / ``after`` constraints among these
    layers, positions (``positions`` overriding the specs') breaking ties; two layers at one position
    with nothing ordering them, or a cycle, is one error naming the layers.
    """
    names = [p.name for p in placements]
    effective = {p.name: (positions or {}).get(p.name, p.position) for p in placements}
    if explicit is not None:
        missing, extra = sorted(set(names) - set(explicit)), sorted(set(explicit) - set(names))
        if missing or extra or len(explicit) != len(set(explicit)):
            raise PluginError(
                f"order must name each enabled layer once: enabled {', '.join(names)}"
                + (f"; missing {', '.join(missing)}" if missing else "")
                + (f"; not enabled {', '.join(extra)}" if extra else "")
            )
        return [(name, effective[name]) for name in explicit]
    present = set(names)
    edges: dict[str, set[str]] = {name: set() for name in names}  # outer -> inner
    for p in placements:
        for other in p.before:
            if other in present:
                edges[p.name].add(other)
        for other in p.after:
            if other in present:
                edges[other].add(p.name)
    related = {(a, b) for a, bs in edges.items() for b in bs}
    by_position: dict[int, list[str]] = {}
    for name in names:
        by_position.setdefault(effective[name], []).append(name)
    for pos, group in by_position.items():
        for i, a in enumerate(group):
            for b in group[i + 1:]:
                if (a, b) not in related and (b, a) not in related:
                    raise PluginError(
                        f"layers {a!r} and {b!r} both sit at position {pos} in this stack; settle it with "
                        f"`positions` (for example {{\"{b}\": {pos + 1}}}) or `order` in the config, or with "
                        "`before` / `after` on either layer's spec"
                    )
    _check_acyclic(names, edges)
    # Positions first; then each layer that declared a constraint moves next to the layer it names
    # (just outside it for ``before``, just inside it for ``after``) until every constraint holds.
    placed = sorted(names, key=lambda n: (effective[n], n))
    moves = [(p.name, other, "before") for p in placements for other in p.before if other in present]
    moves += [(p.name, other, "after") for p in placements for other in p.after if other in present]
    for _ in range(len(names) * max(1, len(moves)) + 1):
        changed = False
        for mover, anchor, side in moves:
            i, j = placed.index(mover), placed.index(anchor)
            if (side == "before" and i > j) or (side == "after" and i < j):
                placed.remove(mover)
                j = placed.index(anchor)
                placed.insert(j if side == "before" else j + 1, mover)
                changed = True
        if not changed:
            return [(name, effective[name]) for name in placed]
    raise PluginError(f"the before/after constraints of layers {', '.join(sorted(names))} cannot all hold")


def _check_acyclic(names: list[str], edges: dict[str, set[str]]) -> None:
    waiting = {name: 0 for name in names}
    for inners in edges.values():
        for inner in inners:
            waiting[inner] += 1
    ready = [n for n, count in waiting.items() if count == 0]
    seen = 0
    while ready:
        name = ready.pop()
        seen += 1
        for inner in edges[name]:
            waiting[inner] -= 1
            if waiting[inner] == 0:
                ready.append(inner)
    if seen != len(names):
        stuck = sorted(n for n, count in waiting.items() if count > 0)
        raise PluginError(f"the before/after constraints of layers {', '.join(stuck)} form a cycle: no order satisfies them")
