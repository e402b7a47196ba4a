"""The one benchmark command runs and writes its table (a smoke run: figures are not judged here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_bench_command_prints_and_writes_the_table(tmp_path: Path) -> None:
    out = tmp_path / "bench.md"
    run = subprocess.run(
        [sys.executable, "-m", "pywats_transport", "bench", "--quick", "--suite", "wats", "--markdown", str(out)],
        capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parent.parent,
    )
    assert run.returncode == 0, run.stderr
    assert "cache hit rate" in run.stdout and "targets met" in run.stdout
    table = out.read_text().splitlines()
    assert table[0] == "| suite | figure | measured | target | verdict |"
    assert any("repeated-lookup time saved" in row for row in table[2:])
