#!/usr/bin/env python3
"""Round trips through this client, to be read against the worker-side figures of `zeroboot bench`:

    client_ping_us        Zeroboot.ping()                     (worker side: rpc_ping_us)
    client_run_echo_us    Zeroboot.run(t, ["echo", "hello"])  (worker side: rpc_run_echo_us)
    client_async_*        the same through AsyncZeroboot
    client_stdio_floor_us this interpreter's round trip to `cat` over pipes (the floor any client here pays)
    raw_ping_us           the worker-side figures again, measured from here the way `zeroboot bench`
    raw_run_echo_us       measures them (one line written, one line read, no client), in the same run

    python3 scripts/bench.py [--samples N] [--json]

Each figure is {n, p50, p90, p99, max, mean} in microseconds (nearest-rank percentiles, as the Rust bench).
The sync client's samples alternate with the raw ones (and the floor's with the ping's) in blocks of 50, so
a noisy moment of the machine touches them alike; the asyncio figures are taken after."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zeroboot import AsyncZeroboot, Zeroboot, find_binary  # noqa: E402


def summary(ns: List[int]) -> Dict[str, float]:
    us = sorted(v / 1000 for v in ns)

    def rank(p: float) -> float:
        i = math.ceil(p / 100 * len(us))
        return round(us[min(max(i, 1), len(us)) - 1], 1)

    return {"n": len(us), "p50": rank(50), "p90": rank(90), "p99": rank(99), "max": round(us[-1], 1),
            "mean": round(sum(us) / len(us), 1)}


def timed(n: int, f: Callable[[], object]) -> List[int]:
    out = []
    for _ in range(n):
        t = time.perf_counter_ns()
        f()
        out.append(time.perf_counter_ns() - t)
    return out


class Raw:
    """A line-echoing child (`cat`, or `zeroboot serve` spoken to without a client)."""

    def __init__(self, argv: List[str]) -> None:
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin = self.proc.stdin
        self.reader = io.BufferedReader(self.proc.stdout, 1 << 16)  # as the client reads
        self.ids = 0

    def line(self, method: str, params: Dict[str, object]) -> bytes:
        self.ids += 1
        return json.dumps({"jsonrpc": "2.0", "id": self.ids, "method": method, "params": params},
                          separators=(",", ":")).encode() + b"\n"

    def round_trip(self, line: bytes) -> tuple[int, bytes]:
        t = time.perf_counter_ns()
        self.stdin.write(line)
        reply = self.reader.readline()
        return time.perf_counter_ns() - t, reply

    def call(self, method: str, params: Dict[str, object]) -> tuple[int, Dict[str, object]]:
        took, reply = self.round_trip(self.line(method, params))
        return took, json.loads(reply)["result"]

    def close(self) -> None:
        self.stdin.close()
        self.proc.wait()


BLOCK = 50


def interleave(n: int, *fs: Callable[[], int]) -> List[List[int]]:
    """`n` samples of each of `fs`, in turns of BLOCK consecutive samples: each figure is measured warm,
    as a client making calls one after another sees it, and a noisy moment touches every figure."""
    out: List[List[int]] = [[] for _ in fs]
    while len(out[0]) < n:
        for f, samples in zip(fs, out):
            samples.extend(f() for _ in range(min(BLOCK, n - len(samples))))
    return out


def one(f: Callable[[], object]) -> int:
    t = time.perf_counter_ns()
    f()
    return time.perf_counter_ns() - t


async def async_figures(n: int) -> Dict[str, List[int]]:
    async with await AsyncZeroboot.start() as zb:
        t = await zb.load_template(builtin="bare")
        await asyncio.sleep(0.2)

        async def timed_async(f) -> List[int]:
            out = []
            for _ in range(n):
                s = time.perf_counter_ns()
                await f()
                out.append(time.perf_counter_ns() - s)
            return out

        ping = await timed_async(zb.ping)
        run = await timed_async(lambda: zb.run(t, ["echo", "hello"]))
    return {"client_async_ping_us": ping, "client_async_run_echo_us": run}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    n = args.samples
    cat = Raw(["cat"])
    raw = Raw([find_binary(), "serve"])
    figures: Dict[str, List[int]] = {}
    with Zeroboot.start() as zb:
        t = zb.load_template(builtin="bare")
        _, rt = raw.call("template.load", {"builtin": "bare"})
        time.sleep(0.2)  # let the pools fill
        ping = raw.line("worker.ping", {})
        (figures["client_stdio_floor_us"], figures["raw_ping_us"], figures["client_ping_us"]) = interleave(
            n, lambda: cat.round_trip(ping)[0], lambda: raw.call("worker.ping", {})[0], lambda: one(zb.ping))
        run = {"template": rt["template"], "argv": ["echo", "hello"]}
        figures["raw_run_echo_us"], figures["client_run_echo_us"] = interleave(
            n, lambda: raw.call("sandbox.run", run)[0], lambda: one(lambda: zb.run(t, ["echo", "hello"])))
    figures.update(asyncio.run(async_figures(n)))
    cat.close()
    raw.close()
    report = {k: summary(v) for k, v in figures.items()}
    if args.json:
        print(json.dumps(report))
    else:
        for k, s in report.items():
            print(f"  {k:<26} p50 {s['p50']:>8} us   p99 {s['p99']:>8} us   max {s['max']:>9} us   (n={s['n']})")


if __name__ == "__main__":
    main()
