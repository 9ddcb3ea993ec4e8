"""Bench: `SandboxPool.run(["echo", ...])` through Ray against the same fork + exec + kill through
one local client, in the same run. Prints one JSON object (microseconds per call: p50/p90/p99/max
over `--runs` calls; wall times in milliseconds).

    python benchmarks/ray_pool.py [--runs 1000] [--nodes 3] [--window 32] [--address ADDR]

Without --address it starts a local cluster of --nodes raylets on this machine
(ray.cluster_utils.Cluster), each advertising the KVM resource: every node shares this host's cores,
so the figures show Ray's per-call cost, not a cluster's throughput."""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

CLIENT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(CLIENT_DIR))

from zeroboot import Zeroboot  # noqa: E402


def summary(samples_us):
    s = sorted(samples_us)
    pick = lambda q: round(s[min(len(s) - 1, int(q * len(s)))], 1)  # noqa: E731
    return {"p50": pick(0.50), "p90": pick(0.90), "p99": pick(0.99), "max": round(s[-1], 1),
            "mean": round(statistics.fmean(s), 1), "n": len(s)}


def timed(fn, runs):
    samples, start = [], time.perf_counter()
    for i in range(runs):
        t = time.perf_counter()
        fn(i)
        samples.append((time.perf_counter() - t) * 1e6)
    return summary(samples), round((time.perf_counter() - start) * 1e3, 1)


def local(runs):
    with Zeroboot.start() as zb:
        t = zb.load_template(builtin="bare")

        def once(i):
            with zb.fork(t) as sb:
                assert sb.exec(["echo", "local", str(i)]).stdout == f"local {i}\n"

        for i in range(20):
            once(i)
        return timed(once, runs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--window", type=int, default=32, help="runs in flight in the concurrent pass")
    ap.add_argument("--address", help="an existing Ray cluster (default: start a local one)")
    a = ap.parse_args()

    import ray
    from zeroboot.ray import KVM_RESOURCE, SandboxPool

    out = {"runs": a.runs}
    out["local_run_echo_us"], out["local_wall_ms"] = local(a.runs)

    cluster = None
    if a.address:
        ray.init(address=a.address, logging_level="WARNING", log_to_driver=False)
    else:
        from ray.cluster_utils import Cluster

        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(CLIENT_DIR), os.environ.get("PYTHONPATH")]))
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        node = {"num_cpus": 2, "resources": {KVM_RESOURCE: 1}}
        cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
        for _ in range(a.nodes - 1):
            cluster.add_node(**node)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
    try:
        with SandboxPool() as pool:
            out["ray_nodes"] = len(pool.nodes())

            def once(i):
                assert pool.run(["echo", "ray", str(i)]).stdout == f"ray {i}\n"

            for i in range(20):
                once(i)
            out["ray_run_echo_us"], out["ray_wall_ms"] = timed(once, a.runs)

            start = time.perf_counter()
            inflight = []
            for i in range(a.runs):
                inflight.append(pool.submit(["echo", str(i)]))
                if len(inflight) >= a.window:
                    inflight.pop(0).result()
            for f in inflight:
                f.result()
            out["ray_concurrent_wall_ms"] = round((time.perf_counter() - start) * 1e3, 1)
            out["ray_concurrent_window"] = a.window
    finally:
        ray.shutdown()
        if cluster:
            cluster.shutdown()
    out["local_again_run_echo_us"], out["local_again_wall_ms"] = local(a.runs)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
