"""``evolve fake-endpoint`` (or ``python -m evolve.fakeserver``): run the test endpoint until SIGINT or SIGTERM.

A deterministic OpenAI-compatible server for trying evolve without any model, for tests and for the benchmark.
It binds loopback only."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import ipaddress
import os
import signal
import sys
from pathlib import Path

from evolve.fakeserver.app import FAULT_KINDS, Config, Fault
from evolve.fakeserver.runner import FakeServer


def _loopback(host: str) -> str:
    """Refuse anything but a loopback address."""
    if host == "localhost":
        return "127.0.0.1"
    try:
        if ipaddress.ip_address(host).is_loopback:
            return host
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"{host!r} is not a loopback address (the fake server binds loopback only)")


def _fault(text: str) -> Fault:
    kind, _, count = text.partition(":")
    if kind not in FAULT_KINDS:
        raise argparse.ArgumentTypeError(f"unknown fault kind {kind!r}; known: {', '.join(FAULT_KINDS)}")
    return Fault(kind=kind, count=int(count or 1))


def parse_args(argv: list[str] | None = None, prog: str = "python -m evolve.fakeserver") -> argparse.Namespace:
    """Command-line flags; every Config field has one."""
    d = Config()
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", type=_loopback, default="127.0.0.1", help="loopback address to bind")
    p.add_argument("--port", type=int, default=0, help="port (0 = pick a free one)")
    p.add_argument("--port-file", type=Path, help="write the bound port to this file once listening")
    p.add_argument("--backlog", type=int, default=4096, help="listen backlog")
    p.add_argument("--model", default=d.model, help="model name served by /v1/models")
    p.add_argument("--latency", type=float, default=d.latency, help="seconds before each chat answer")
    p.add_argument("--reject-ratio", type=float, default=d.reject_ratio, help="judge 'no' share in [0, 1]")
    p.add_argument("--score-min", type=int, default=d.score_min, help="lowest judge score")
    p.add_argument("--score-max", type=int, default=d.score_max, help="highest judge score")
    p.add_argument("--text-only", action="store_true", help="answer 500 to requests with image parts")
    p.add_argument("--batch-polls", type=int, default=d.batch_polls, help="retrieves until a batch completes")
    p.add_argument("--strict-model", action="store_true", help="404 for a model other than --model")
    p.add_argument("--log-max", type=int, default=d.log_max, help="request log entries kept")
    p.add_argument("--verdict-noise", type=float, default=d.verdict_noise,
                   help="with a request seed: share of judge verdicts flipped per (question, seed)")  # fmt: skip
    p.add_argument("--false-claim-ratio", type=float, default=d.false_claim_ratio,
                   help="share of claims the claim checker answers 'no' (by a stable hash of the claim)")  # fmt: skip
    p.add_argument("--item-tokens", type=int, default=d.item_tokens,
                   help="pad each rewritten item's answer to about this many tokens (0: no padding)")  # fmt: skip
    p.add_argument("--flawed-ratio", type=float, default=d.flawed_ratio,
                   help="share of rewrites that refer to the original question (breaks a rule check)")  # fmt: skip
    p.add_argument("--echo-ratio", type=float, default=d.echo_ratio,
                   help="share of rewrites that nearly repeat the given question (a near duplicate)")  # fmt: skip
    p.add_argument("--no-prefix-cache", dest="prefix_cache", action="store_false",
                   help="do not emulate prompt caching (no usage.prompt_tokens_details)")  # fmt: skip
    p.add_argument("--prefix-cache-blocks", type=int, default=d.prefix_cache_blocks,
                   help="prefix hashes (one per 128-token boundary) the prompt cache keeps")  # fmt: skip
    p.add_argument("--fault", type=_fault, action="append", default=[], metavar="KIND[:COUNT]",
                   help="queue a fault at start-up (repeatable)")  # fmt: skip
    return p.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    """Start, write the port file, and wait for a signal."""
    config = Config(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Config)})
    server = FakeServer(config)
    server.app.faults.extend(args.fault)
    port = await server.start(args.host, args.port, args.backlog)
    if args.port_file is not None:
        tmp = args.port_file.with_name(args.port_file.name + ".tmp")
        tmp.write_text(f"{port}\n")
        os.replace(tmp, args.port_file)
    print(f"fakeserver listening on http://{args.host}:{port}/v1", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await server.close()


def main(argv: list[str] | None = None, prog: str = "python -m evolve.fakeserver") -> int:
    """Entry point."""
    args = parse_args(argv, prog)
    try:
        asyncio.run(serve(args))
    except OSError as exc:
        print(f"fakeserver: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
