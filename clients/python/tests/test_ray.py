"""zeroboot.ray on a local three-node Ray cluster (ray.cluster_utils.Cluster: three raylets on this
machine, each advertising the KVM resource, each pool actor with its own `zeroboot serve`)."""

import os
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed (scripts/pyenv installs it)")
from ray.cluster_utils import Cluster  # noqa: E402

from zeroboot import Zeroboot  # noqa: E402
from zeroboot.ray import KVM_RESOURCE, SandboxLostError, SandboxPool  # noqa: E402

pytestmark = pytest.mark.kvm
CLIENT_DIR = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cluster():
    if not os.path.exists("/dev/kvm"):
        pytest.skip("/dev/kvm is missing")
    # The nodes' worker processes import zeroboot from this checkout.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(CLIENT_DIR), os.environ.get("PYTHONPATH")]))
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    node_args = {"num_cpus": 2, "resources": {KVM_RESOURCE: 1}}
    c = Cluster(initialize_head=True, head_node_args={**node_args, "include_dashboard": False})
    for _ in range(2):
        c.add_node(**node_args)
    c.wait_for_nodes()
    ray.init(address=c.address, logging_level="WARNING", log_to_driver=False)
    yield c
    ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="module")
def pool(cluster):
    p = SandboxPool(capacity_per_node=16)
    yield p
    p.shutdown()


def node_ids(cluster):
    return {n.node_id for n in cluster.list_all_nodes()}


def test_fork_spreads_by_free_capacity_and_handles_route_to_their_node(cluster, pool):
    sbs = pool.fork("bare", 6)
    try:
        per = {}
        for sb in sbs:
            per[sb.node_id] = per.get(sb.node_id, 0) + 1
        assert per == {n: 2 for n in node_ids(cluster)}, per
        # Taking free capacity into account: with 2 live on each node, 3 more land one per node.
        more = pool.fork("bare", 3)
        assert sorted(sb.node_id for sb in more) == sorted(node_ids(cluster))
        sbs += more
        # Every handle reaches its own sandbox on its own node: state written through it is there.
        for i, sb in enumerate(sbs):
            sb.write_file("/who", f"sandbox {i}")
        for i, sb in enumerate(sbs):
            assert sb.read_file("/who") == f"sandbox {i}".encode()
            r = sb.exec(["echo", "hi"])
            assert (r.stdout, r.exit_code, r.raw["node_id"], r.raw["sandbox"]) == ("hi\n", 0, sb.node_id, sb.id)
        assert sum(n["sandboxes"] for n in pool.nodes()) == len(sbs)
    finally:
        for sb in sbs:
            sb.kill()
    assert sum(n["sandboxes"] for n in pool.nodes()) == 0


def test_run_uses_every_node(cluster, pool):
    futures = [pool.submit(["echo", str(i)]) for i in range(30)]
    results = [f.result() for f in futures]
    assert [r.stdout for r in results] == [f"{i}\n" for i in range(30)]
    assert {r.raw["node_id"] for r in results} == node_ids(cluster)
    # One at a time, equally free nodes take turns.
    assert {pool.run(["echo"]).raw["node_id"] for _ in range(3)} == node_ids(cluster)
    assert pool.run(["exit", "4"]).exit_code == 4


def test_templates_are_shipped_through_the_object_store_or_read_from_a_shared_path(cluster, pool, tmp_path):
    saved = tmp_path / "marked.zbt"
    with Zeroboot.start() as zb:
        t = zb.load_template(builtin="bare")
        with zb.fork(t) as sb:
            sb.write_file("/marker", "branched before shipping")
            branch = sb.snapshot()
        zb.save_template(branch, str(saved))
    pool.load_template("shared", path=str(saved))
    pool.load_template("shipped", file=str(saved))
    shared = pool.fork("shared", 3)
    saved.unlink()  # from here on, the nodes can only get "shipped" from the object store
    shipped = pool.fork("shipped", 3)
    try:
        for sb in shared + shipped:
            assert sb.read_file("/marker") == b"branched before shipping", sb
        assert {sb.node_id for sb in shipped} == node_ids(cluster)
    finally:
        for sb in shared + shipped:
            sb.kill()


def test_a_dead_node_loses_its_sandboxes_and_the_pool_serves_on(cluster, pool):
    # Last in this file: it removes a node from the module's cluster.
    sbs = pool.fork("bare", 6)
    victim = next(n for n in cluster.worker_nodes)
    doomed = [sb for sb in sbs if sb.node_id == victim.node_id]
    kept = [sb for sb in sbs if sb.node_id != victim.node_id]
    assert doomed and kept
    outcome = {}

    def spin():
        try:
            outcome["result"] = doomed[0].exec(["spin"], timeout_ms=60000)
        except BaseException as e:  # noqa: BLE001 - inspected below
            outcome["error"] = e

    t = threading.Thread(target=spin)
    t.start()
    time.sleep(1)  # the exec is running on the victim
    started = time.monotonic()
    cluster.remove_node(victim)
    t.join(60)
    assert not t.is_alive()
    assert isinstance(outcome.get("error"), SandboxLostError), outcome
    assert outcome["error"].sandbox == doomed[0].id and outcome["error"].node_id == victim.node_id
    assert time.monotonic() - started < 30
    for sb in doomed[1:]:
        with pytest.raises(SandboxLostError):
            sb.exec(["echo", "gone"])
    assert [n["alive"] for n in pool.nodes() if n["node_id"] == victim.node_id] == [False]
    for sb in kept:
        assert sb.exec(["echo", "still", "here"]).stdout == "still here\n"
    runs = [pool.run(["echo", str(i)]) for i in range(6)]
    assert [r.stdout for r in runs] == [f"{i}\n" for i in range(6)]
    assert {r.raw["node_id"] for r in runs} == node_ids(cluster)  # the two nodes left
    for sb in sbs:
        sb.kill()
