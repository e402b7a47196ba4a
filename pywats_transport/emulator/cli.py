"""``pywats-transport emulator``: run the WATS emulator until interrupted."""

from __future__ import annotations

import argparse
import errno
import socket
import sys
import threading
from typing import Any

from ..cli_types import number, port


def _run(args: argparse.Namespace) -> int:
    from .server import EmulatorServer

    if args.outage_after is None:
        given = [flag for flag, value in (("--outage-seconds", args.outage_seconds), ("--outage-mode", args.outage_mode))
                 if value is not None]
        if given:
            print(f"pywats-transport emulator: error: {given[0]} needs --outage-after SECONDS (when the outage "
                  "starts)", file=sys.stderr)
            return 2
    try:
        emu = EmulatorServer(
            token=args.token, host=args.host, port=args.port, drop_rate=args.drop_rate, latency_ms=args.latency_ms,
            latency_jitter_ms=args.jitter_ms, fail_rate=args.fail_rate, retry_after=args.retry_after,
            slow_body_ms=args.slow_body_ms, log_level="info" if args.verbose else "warning",
        )
    except ValueError as exc:
        print(f"pywats-transport emulator: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # as the client service says it of its health server
        print(f"pywats-transport emulator: error: {_cannot_listen(exc, args.host, args.port)}", file=sys.stderr)
        return 4
    with emu:
        print(f"WATS emulator listening on {emu.url} (Ctrl+C to stop)", flush=True)
        if args.outage_after is not None:
            timer = threading.Timer(args.outage_after, emu.outage,
                                    args=(args.outage_seconds or 5.0, args.outage_mode or "refuse"))
            timer.daemon = True
            timer.start()
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
    return 0


def _cannot_listen(exc: OSError, host: str, port: int) -> str:
    if isinstance(exc, socket.gaierror):
        return f"--host {host!r} cannot be resolved: {exc.strerror}"
    if exc.errno == errno.EADDRINUSE:
        return f"--port {port} on {host} is already in use by another program"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"--port {port} on {host}: permission denied (ports below 1024 need privileges)"
    return f"--host {host!r} / --port {port}: cannot listen there: {exc.strerror}"


def register(sub: Any) -> None:
    p = sub.add_parser("emulator", help="run the embedded WATS emulator")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=port, default=8765, help="port to listen on (default: 8765; 0: any free one)")
    p.add_argument("--token", help="accept only this token (default: any non-empty token)")
    p.add_argument("--latency-ms", type=float, default=0.0, help="latency added to every request")
    p.add_argument("--jitter-ms", type=float, default=0.0, help="random extra latency up to this")
    p.add_argument("--fail-rate", type=float, default=0.0, help="share of requests answered 503/429 with Retry-After")
    p.add_argument("--retry-after", type=int, default=0, help="seconds in Retry-After of injected failures")
    p.add_argument("--drop-rate", type=float, default=0.0, help="share of requests whose connection is dropped")
    p.add_argument("--slow-body-ms", type=float, default=0.0, help="trickle each body out over this long")
    p.add_argument("--outage-after", type=number(0), metavar="SECONDS",
                   help="start an outage this long after starting (also: POST /_emulator/outage)")
    p.add_argument("--outage-seconds", type=number(0, above=True), help="how long the outage lasts (default: 5)")
    p.add_argument("--outage-mode", choices=["503", "refuse"],
                   help="503: answer 503; refuse: leave the network, connections refused (the default)")
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO (default: warnings only)")
    p.set_defaults(func=_run)
