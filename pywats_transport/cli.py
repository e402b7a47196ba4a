"""pywats-transport: stackable httpx transport layers (cache, retry, throttle, metrics) and a WATS client."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .config import PROFILES
from .errors import TransportError


def _stack_config(path: str | None, profile: str | None) -> Any:
    """A TransportConfig from a TransportConfig file or the client service's file (which implies the WATS profile)."""
    from .config import TransportConfig, read_json_file

    if path is not None and {"service_address", "api_token"} & set(read_json_file(path)):
        from .service.config import ClientConfig
        from .wats.client import resolve_config

        client = ClientConfig.load(path)
        return resolve_config(client.transport or None, client.transport_flags())
    return TransportConfig.load(path, profile=profile)


def _cmd_stack(args: argparse.Namespace) -> int:
    from .builder import build_transport

    config = _stack_config(args.config, args.profile)
    stack = build_transport(config)
    try:
        chain = stack.describe()
        if args.json:
            print(json.dumps(chain, indent=2))
        else:
            print(f"profile: {config.profile}")
            for i, item in enumerate(chain, 1):
                where = f"position {item['position']:<5}" if item.get("position") is not None else ""
                print(f"{i}. {item['name']:<16} {where} {item['class']}")
                sources = item.get("sources", {})
                for key, value in item["settings"].items():
                    print(f"   {key} = {json.dumps(value)}  ({sources.get(key, 'default')})")
    finally:
        stack.close()
    return 0


def _cmd_plugins(args: argparse.Namespace) -> int:
    if getattr(args, "plugins_command", None) == "new":
        from .scaffold import write_plugin

        folder = write_plugin(args.name, args.output)
        # Spelt as a path: pip takes a bare name for a requirement and looks it up in the package index.
        target = str(folder) if Path(folder).parent != Path(".") else os.path.join(".", folder)
        shown = f'"{target}"' if " " in target else target
        print(f"wrote {folder}: pip install {shown}, then `pywats-transport plugins` lists {args.name!r}")
        return 0
    from .plugins import get_plugin_manager

    pm = get_plugin_manager()
    rows: list[dict[str, Any]] = [
        {"name": name, "position": src.spec.position, "source": src.origin, "description": src.spec.description,
         "status": "ok"}
        for name, src in pm.layers().items()
    ]
    rows += [{"name": b.name, "position": None, "source": b.origin, "description": "", "status": "broken",
              "error": b.error} for b in pm.broken.values()]
    rows += [{"name": name, "position": s.spec.position, "source": s.origin, "description": s.spec.description,
              "status": "clash"} for name, sources in pm.clashes.items() for s in sources]
    rows += [{"name": name, "position": None, "source": "installed", "description": "", "status": "blocked"}
             for name in sorted(pm.blocked & set(pm.installed()))]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            where = f"position {row['position']:<5}" if row["position"] is not None else " " * 14
            error = f": {row['error']}" if "error" in row else ""
            status = "" if row["status"] == "ok" else f"  [{row['status']}{error}]"
            print(f"{row['name']:<16} {where} {row['source']}{status}")
    if args.strict and any(row["status"] != "ok" for row in rows):
        return 3  # distinct from errors of the command itself (2)
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    try:
        from benchmarks.__main__ import main as bench_main
    except ImportError:
        print("pywats-transport bench runs from a source checkout (the benchmarks/ folder next to the package)",
              file=sys.stderr)
        return 2
    argv = ["--quick"] if args.quick else []
    for suite in args.suite or ():
        argv += ["--suite", suite]
    if args.markdown:
        argv += ["--markdown", args.markdown]
    return bench_main(argv)


def _bench_suites() -> tuple[str, ...]:
    try:
        from benchmarks import SUITE_NAMES
    except ImportError:  # an installed package without the source checkout
        return ("cache", "layers", "metrics", "wats", "reliability", "service", "offline", "fleet")
    return tuple(SUITE_NAMES)


def build_parser() -> argparse.ArgumentParser:
    from ._version import __version__

    parser = argparse.ArgumentParser(prog="pywats-transport", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("stack", help="print the assembled transport chain")
    p.add_argument("--config", help="JSON config file: a TransportConfig, or the client service's client.json")
    p.add_argument("--profile", choices=sorted(PROFILES), help="the defaults beneath the config (default: generic)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_stack)

    p = sub.add_parser("plugins", help="list the discovered layer plugins and where they come from")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--strict", action="store_true", help="exit 3 when a plugin is broken, clashing or blocked")
    p.set_defaults(func=_cmd_plugins, plugins_command=None)
    psub = p.add_subparsers(dest="plugins_command")
    new = psub.add_parser("new", help="write a working plugin distribution skeleton")
    new.add_argument("name", help="the plugin's name (a Python identifier, e.g. useragent)")
    new.add_argument("--output", "-o", default=".", help="the folder to write pywats-transport-NAME/ into")
    new.set_defaults(func=_cmd_plugins)

    p = sub.add_parser("bench", help="run the benchmark suites (from a source checkout) and print one table")
    p.add_argument("--quick", action="store_true", help="fewer iterations (a smoke run, not for figures)")
    p.add_argument("--suite", action="append", help=f"run only this suite (repeatable): {', '.join(_bench_suites())}")
    p.add_argument("--markdown", metavar="FILE", help="also write the table as Markdown")
    p.set_defaults(func=_cmd_bench)

    for register in _extensions():
        register(sub)
    return parser


def _extensions() -> list[Callable[[Any], None]]:
    """Subcommands defined next to what they run (emulator, demo, service, bench)."""
    out: list[Callable[[Any], None]] = []
    for module_name in ("pywats_transport.emulator.cli", "pywats_transport.demo", "pywats_transport.service.cli"):
        try:
            module = __import__(module_name, fromlist=["register"])
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                continue
            raise
        out.append(module.register)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except TransportError as exc:
        # One line, no traceback; the exit code says what kind of failure (docs/service.md).
        print(f"pywats-transport: error: {exc}", file=sys.stderr)
        return int(getattr(exc, "exit_code", 2) or 2)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`pywats-transport stack --json | head`): not an error of ours.
        # Point stdout at devnull so that the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
