"""Where cached keys were fetched from, by origin and path segment, for prefix invalidation.

A write to ``/api/Product`` must find ``/api/Product/PN-1`` and
``/api/Product/Query`` without scanning every key: a trie of path segments makes
the cost that of the subtree being dropped, not of the whole cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class _Node:
    children: dict[str, _Node] = field(default_factory=dict)
    keys: dict[str, float] = field(default_factory=dict)  # key -> expires_at


def _segments(path: str) -> list[str]:
    return [s for s in path.split("/") if s]


def is_under(path: str, prefix: str) -> bool:
    """Whether ``path`` is ``prefix`` or lies below it, segment by segment (as :meth:`PathIndex.under`)."""
    wanted = _segments(prefix)
    return _segments(path)[:len(wanted)] == wanted


class PathIndex:
    def __init__(self) -> None:
        self._roots: dict[str, _Node] = {}
        self._where: dict[str, tuple[str, tuple[str, ...]]] = {}
        #: no key expires before this: until then a search for expired keys would walk the index for none
        self.earliest = float("inf")

    def __len__(self) -> int:
        return len(self._where)

    def add(self, key: str, origin: str, path: str, expires_at: float) -> None:
        segs = tuple(_segments(path))
        if key in self._where:
            self.discard(key)
        node = self._roots.setdefault(origin, _Node())
        for seg in segs:
            node = node.children.setdefault(seg, _Node())
        node.keys[key] = expires_at
        self._where[key] = (origin, segs)
        if expires_at < self.earliest:
            self.earliest = expires_at

    def discard(self, key: str) -> float | None:
        where = self._where.pop(key, None)
        if where is None:
            return None
        origin, segs = where
        node = self._roots.get(origin)
        trail = []
        for seg in segs:
            if node is None:
                return None
            trail.append((node, seg))
            node = node.children.get(seg)
        if node is None:
            return None
        expires = node.keys.pop(key, None)
        # Drop emptied branches so a long-running cache does not keep dead paths.
        for parent, seg in reversed(trail):
            child = parent.children[seg]
            if child.keys or child.children:
                break
            del parent.children[seg]
        return expires

    def under(self, prefix: str, origin: str | None = None) -> list[str]:
        """Keys at ``prefix`` or below it, for one origin or (``origin=None``) every origin."""
        segs = _segments(prefix)
        roots = [self._roots.get(origin)] if origin is not None else list(self._roots.values())
        found: list[str] = []
        for node in roots:
            for seg in segs:
                if node is None:
                    break
                node = node.children.get(seg)
            if node is None:
                continue
            stack = [node]
            while stack:
                n = stack.pop()
                found.extend(n.keys)
                stack.extend(n.children.values())
        return found

    def expired(self, now: float) -> list[str]:
        out: list[str] = []
        if now < self.earliest:
            return out
        earliest = float("inf")
        stack = list(self._roots.values())
        while stack:
            n = stack.pop()
            for k, t in n.keys.items():
                if t <= now:
                    out.append(k)
                elif t < earliest:
                    earliest = t
            stack.extend(n.children.values())
        self.earliest = earliest
        return out
