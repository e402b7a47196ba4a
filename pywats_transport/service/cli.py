"""``pywats-transport serve`` and ``pywats-transport config init``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from pathlib import Path
from typing import Any


def _serve(args: argparse.Namespace) -> int:
    from .config import ClientConfig
    from .service import AsyncClientService

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = ClientConfig.load(args.config)
    service = AsyncClientService(config)

    def banner(started: AsyncClientService) -> None:
        print(f"pywats-transport client service: queue {os.path.abspath(config.queue_dir)}, health on "
              f"http://{config.health_host}:{started.health_port} (Ctrl+C to stop)", flush=True)

    asyncio.run(service.run_forever(on_started=banner))
    return 0


def _config_init(args: argparse.Namespace) -> int:
    from .config import write_example

    path = Path(args.output or args.path)
    write_example(path, force=args.force)
    print(f"wrote {path}")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the client service (queue + health server)")
    p.add_argument("--config", required=True, help="ClientConfig JSON file")
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO (default: warnings only)")
    p.set_defaults(func=_serve)

    p = sub.add_parser("config", help="client service configuration")
    csub = p.add_subparsers(dest="config_command", required=True)
    init = csub.add_parser("init", help="write a commented example config")
    init.add_argument("path", nargs="?", default="client.json", help="where to write it (default: client.json)")
    init.add_argument("--output", "-o", help="the same as PATH")
    init.add_argument("--force", action="store_true", help="overwrite an existing file")
    init.set_defaults(func=_config_init)
