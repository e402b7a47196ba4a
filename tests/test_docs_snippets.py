"""Every Python block in README.md and docs/ runs as written, against the embedded emulator.

The docs address the server as ``https://wats.example.com``; the test points that name at a running
emulator, and nothing else changes. Top-level ``await`` runs as it does in ``python -m asyncio``.
"""

from __future__ import annotations

import ast
import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pywats_transport.emulator import EmulatorServer

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def blocks() -> list[Any]:
    return [
        pytest.param(match.group(1), id=f"{page.relative_to(ROOT)}#{i}")
        for page in PAGES
        for i, match in enumerate(BLOCK.finditer(page.read_text(encoding="utf-8")), 1)
    ]


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorServer]:
    with EmulatorServer() as server:
        yield server


def test_the_docs_have_python_blocks() -> None:
    assert len(blocks()) >= 8


@pytest.mark.parametrize("source", blocks())
def test_block_runs(source: str, emulator: EmulatorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # a block that writes files writes them here
    code = compile(source.replace("https://wats.example.com", emulator.url), "<doc block>", "exec",
                   flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    namespace: dict[str, Any] = {"__name__": "__doc_block__"}
    result = eval(code, namespace)  # noqa: S307 - the project's own documentation
    if asyncio.iscoroutine(result):
        asyncio.run(result)
