"""``python -m benchmarks`` (or ``pywats-transport bench``): every suite, one table."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from collections.abc import Sequence

from pywats_transport.plugins import ENV_DISABLE_AUTOLOAD

from . import SUITE_NAMES
from .common import Row, table

SUITES = {name: importlib.import_module(f"benchmarks.bench_{name}") for name in SUITE_NAMES}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer iterations (a smoke run, not for figures)")
    parser.add_argument("--suite", action="append", choices=sorted(SUITES), help="run only these suites")
    parser.add_argument("--markdown", metavar="FILE", help="also write the table as Markdown")
    args = parser.parse_args(argv)
    # The suites build only built-in layers. Installed plugins load when a stack enables one, so the test
    # suite's deliberately broken plugins (installed with the dev requirements) do not warn in every
    # station process the suites start.
    os.environ.setdefault(ENV_DISABLE_AUTOLOAD, "1")
    rows: list[Row] = []
    started = time.perf_counter()
    for name in args.suite or list(SUITES):
        print(f"running {name} ...", file=sys.stderr, flush=True)
        rows += SUITES[name].run(quick=args.quick)
    if args.quick:
        # Too few samples to hold a target to: a miss is shown, not judged.
        for row in rows:
            if row.passed is False:
                row.passed, row.informational = None, True
    print(table(rows))
    failed = [r for r in rows if r.passed is False]
    informational = sum(r.informational for r in rows)
    print(f"\n{len(rows)} figures, {sum(r.passed is True for r in rows)} targets met, {len(failed)} missed"
          + (f", {informational} informational (a quick run cannot hold them)" if informational else "")
          + f" ({time.perf_counter() - started:.0f} s)")
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as fh:
            fh.write(table(rows, markdown=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
