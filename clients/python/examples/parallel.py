#!/usr/bin/env python3
"""Forks 100 sandboxes from the bare template in parallel (asyncio), runs a command in each, and prints
the latency distribution of fork, exec and fork+exec as the client saw them.

    ZEROBOOT_BIN=/path/to/zeroboot python3 examples/parallel.py
"""
import asyncio
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from zeroboot import AsyncZeroboot  # noqa: E402

N = int(os.environ.get("N", "100"))


def pct(xs, p):
    s = sorted(xs)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


def row(name, xs):
    print(f"{name:<14} p50 {pct(xs, 50):8.2f} ms  p90 {pct(xs, 90):8.2f} ms  p99 {pct(xs, 99):8.2f} ms  max {max(xs):8.2f} ms")


async def one(zb, t, i):
    t0 = time.perf_counter()
    async with await zb.fork(t) as sb:
        t1 = time.perf_counter()
        r = await sb.exec(["echo", f"sandbox {i}"])
        t2 = time.perf_counter()
        assert r.stdout == f"sandbox {i}\n" and r.exit_code == 0, r
        return (t1 - t0) * 1e3, (t2 - t1) * 1e3, (t2 - t0) * 1e3, sb.fork_us / 1e3


async def main():
    async with await AsyncZeroboot.start() as zb:
        t = await zb.load_template(builtin="bare")
        start = time.perf_counter()
        samples = await asyncio.gather(*(one(zb, t, i) for i in range(N)))
        wall = (time.perf_counter() - start) * 1e3
    print(f"{N} sandboxes forked and exec'd in parallel in {wall:.1f} ms (client-side latencies):")
    for k, name in enumerate(["fork", "exec", "fork+exec", "fork (worker)"]):
        row(name, [s[k] for s in samples])


asyncio.run(main())
