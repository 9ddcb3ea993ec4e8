"""zeroboot on a Ray cluster: a pool of sandboxes spread over every node that can open /dev/kvm.

The worker stays a per-host stdio process; placement across hosts is Ray's job. `SandboxPool` starts
one actor per node that advertises the custom resource `zeroboot_kvm` (start such nodes with
`ray start --resources='{"zeroboot_kvm": 1}'`); each actor owns one `zeroboot serve` child on its
node. Templates are loaded on a node the first time work for them lands there: a built-in, a path
every node sees, or a template file shipped once through Ray's object store. `run` (fork, exec,
kill) and `fork` go to the nodes with the most free capacity; a sandbox handle always routes to its
node. When a node dies, its sandboxes raise `SandboxLostError` and the pool serves on the others.

    pool = SandboxPool()                                   # after ray.init(...)
    r = pool.run(["echo", "hi"])                           # a fresh sandbox on the freest node
    sbs = pool.fork("bare", 8)                             # spread by free capacity
    print(sbs[0].exec(["echo", "hi"]).stdout, sbs[0].node_id)

Ray is an optional dependency: `pip install 'zeroboot[ray]'`."""

from __future__ import annotations

import base64
import os
import tempfile
import threading
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Union

try:
    import ray
    from ray.exceptions import RayActorError
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("zeroboot.ray needs Ray: pip install 'zeroboot[ray]' (or pip install ray)") from e

from ._client import ExecResult, Zeroboot
from ._client import _exec_params as _client_exec_params
from ._errors import ZerobootError

__all__ = ["KVM_RESOURCE", "NoNodesError", "PoolSandbox", "RunFuture", "SandboxLostError", "SandboxPool", "TemplateSource"]

KVM_RESOURCE = "zeroboot_kvm"
"""The custom resource a node advertises when it can open /dev/kvm; one pool actor takes it per node."""


class SandboxLostError(ZerobootError):
    """The node (or its worker) holding a sandbox died; the sandbox and its state are gone."""

    def __init__(self, sandbox: str, node_id: str, cause: BaseException) -> None:
        super().__init__(f"sandbox {sandbox} was lost with node {node_id}: {cause}")
        self.sandbox = sandbox
        self.node_id = node_id


class NoNodesError(ZerobootError):
    """No live node of the pool can take the work."""


@dataclass(frozen=True)
class TemplateSource:
    """Where a node gets a template: exactly one of a built-in name, a path every node sees, or the
    file's bytes in the object store (`data`, an ObjectRef)."""

    builtin: Optional[str] = None
    path: Optional[str] = None
    data: Any = None


@ray.remote(max_concurrency=64)
class _NodeWorker:
    """One per node: owns the node's `zeroboot serve` and loads templates on first use. Threaded:
    calls run concurrently, as the synchronous client allows."""

    def __init__(self, binary: Optional[str], args: Sequence[str]) -> None:
        self._zb = Zeroboot.start(binary, args)
        self._lock = threading.Lock()
        self._templates: Dict[str, str] = {}
        self._node_id = ray.get_runtime_context().get_node_id()

    def info(self) -> Dict[str, Any]:
        limits = self._zb.info()["limits"]
        return {"node_id": self._node_id, "max_sandboxes": limits["max_sandboxes"]}

    def _template(self, name: str, source: TemplateSource) -> str:
        with self._lock:
            if name in self._templates:
                return self._templates[name]
            if source.builtin is not None:
                t = self._zb.load_template(builtin=source.builtin)
            elif source.path is not None:
                t = self._zb.load_template(path=source.path)
            else:
                data = ray.get(source.data)
                with tempfile.NamedTemporaryFile(prefix="zeroboot-tpl-", delete=False) as f:
                    f.write(data)
                try:
                    t = self._zb.load_template(path=f.name)
                finally:
                    os.unlink(f.name)
            self._templates[name] = t.id
            return t.id

    def run(self, name: str, source: TemplateSource, params: Dict[str, Any]) -> Dict[str, Any]:
        sb = self._zb.fork(self._template(name, source))
        try:
            return self.exec(sb.id, params)
        finally:
            sb.kill()

    def fork(self, name: str, source: TemplateSource, count: int) -> List[str]:
        return [sb.id for sb in self._zb.fork_many(self._template(name, source), count)]

    def exec(self, sandbox: str, params: Dict[str, Any]) -> Dict[str, Any]:
        r = self._zb.call("sandbox.exec", {**params, "sandbox": sandbox})
        return {**r, "node_id": self._node_id, "sandbox": sandbox}

    def write_file(self, sandbox: str, path: str, data: bytes) -> int:
        params = {"sandbox": sandbox, "path": path, "data_base64": base64.b64encode(data).decode("ascii")}
        return self._zb.call("sandbox.write_file", params)["bytes"]

    def read_file(self, sandbox: str, path: str) -> bytes:
        r = self._zb.call("sandbox.read_file", {"sandbox": sandbox, "path": path, "encoding": "base64"})
        return base64.b64decode(r["data"])

    def kill(self, sandbox: str) -> None:
        self._zb.call("sandbox.kill", {"sandbox": sandbox})

    def stop(self) -> None:
        self._zb.stop()


@dataclass
class _Node:
    node_id: str
    actor: Any
    capacity: int
    live: int = 0  # sandboxes of handles on this node, plus runs in flight
    alive: bool = True
    picks: int = 0  # slots ever reserved here: among equally free nodes, the least picked wins

    @property
    def free(self) -> int:
        return self.capacity - self.live


def _exec_params(argv: Optional[Sequence[str]], code: Optional[str], stdin, env, cwd, timeout_ms) -> Dict[str, Any]:
    """`sandbox.exec` params for argv or Python `code`, without the sandbox (the node fills it in)."""
    if (argv is None) == (code is None):
        raise ValueError("give exactly one of argv or code=")
    args, program = (list(argv), "argv") if argv is not None else ([code], "python")
    return {**_client_exec_params({}, args, stdin, env, cwd, timeout_ms, None, False), "program": program}


class PoolSandbox:
    """A sandbox on one node of the pool; every call goes to that node."""

    def __init__(self, pool: "SandboxPool", node: _Node, sandbox: str, template: str) -> None:
        self.pool = pool
        self._node = node
        self.id = sandbox
        self.template = template
        self._killed = False

    @property
    def node_id(self) -> str:
        return self._node.node_id

    def __repr__(self) -> str:
        return f"PoolSandbox({self.id!r}, node={self.node_id[:12]!r})"

    def _call(self, method: str, *args: Any) -> Any:
        return self.pool._call_on(self._node, getattr(self._node.actor, method).remote(self.id, *args),
                                  lost=self.id)

    def exec(self, argv: Optional[Sequence[str]] = None, *, code: Optional[str] = None, stdin: Optional[str] = None,
             env: Optional[Dict[str, str]] = None, cwd: Optional[str] = None,
             timeout_ms: Optional[int] = None) -> ExecResult:
        """Runs argv (or Python `code`, on a Linux template) in this sandbox."""
        return ExecResult._from(self._call("exec", _exec_params(argv, code, stdin, env, cwd, timeout_ms)))

    def write_file(self, path: str, data: Union[str, bytes]) -> int:
        return self._call("write_file", path, data.encode() if isinstance(data, str) else data)

    def read_file(self, path: str) -> bytes:
        return self._call("read_file", path)

    def kill(self) -> None:
        """Kills the sandbox; a second kill, or a kill after its node died, does nothing."""
        if self._killed:
            return
        self._killed = True
        self.pool._release(self._node, 1)
        if self._node.alive:
            try:
                self._call("kill")
            except SandboxLostError:
                pass

    def __enter__(self) -> "PoolSandbox":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.kill()


class SandboxPool:
    """Sandboxes spread over the Ray cluster's KVM nodes (see the module's doc). Call after
    `ray.init()`; `shutdown()` (or leaving a `with` block) stops the node actors."""

    def __init__(self, *, resource: str = KVM_RESOURCE, binary: Optional[str] = None,
                 serve_args: Sequence[str] = ("serve",), capacity_per_node: Optional[int] = None) -> None:
        self._resource = resource
        self._binary = binary
        self._serve_args = list(serve_args)
        self._capacity = capacity_per_node
        self._lock = threading.Lock()
        self._nodes: Dict[str, _Node] = {}
        self._templates: Dict[str, TemplateSource] = {"bare": TemplateSource(builtin="bare")}
        self.refresh()

    # ---- nodes -----------------------------------------------------------------------------
    def refresh(self) -> List[str]:
        """Starts an actor on every live node with the resource that has none yet (nodes that joined
        since); returns the new nodes' ids."""
        wanted = [n["NodeID"] for n in ray.nodes()
                  if n.get("Alive") and n.get("Resources", {}).get(self._resource, 0) >= 1]
        started = []
        for node_id in wanted:
            with self._lock:
                if node_id in self._nodes and self._nodes[node_id].alive:
                    continue
            actor = _NodeWorker.options(
                resources={self._resource: 1},
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
            ).remote(self._binary, self._serve_args)
            started.append((node_id, actor, actor.info.remote()))
        for node_id, actor, info in started:
            capacity = self._capacity or ray.get(info)["max_sandboxes"]
            with self._lock:
                self._nodes[node_id] = _Node(node_id, actor, capacity)
        if not self._nodes:
            raise NoNodesError(f"no live Ray node has the resource {self._resource!r} "
                               f"(start KVM nodes with --resources='{{\"{self._resource}\": 1}}')")
        return [n for n, _, _ in started]

    def nodes(self) -> List[Dict[str, Any]]:
        """Each node of the pool: id, alive, capacity and sandboxes (live handles + runs in flight)."""
        with self._lock:
            return [{"node_id": n.node_id, "alive": n.alive, "capacity": n.capacity, "sandboxes": n.live}
                    for n in self._nodes.values()]

    def _take(self, count: int) -> List[_Node]:
        """Reserves `count` slots on the nodes with the most free capacity, one at a time."""
        with self._lock:
            alive = [n for n in self._nodes.values() if n.alive]
            if not alive:
                raise NoNodesError("every node of the pool is dead")
            chosen = []
            for _ in range(count):
                node = max(alive, key=lambda n: (n.free, -n.picks))
                if node.free <= 0:
                    for n in chosen:
                        n.live -= 1
                    raise NoNodesError(f"no free capacity for {count} sandboxes")
                node.live += 1
                node.picks += 1
                chosen.append(node)
            return chosen

    def _release(self, node: _Node, count: int) -> None:
        with self._lock:
            node.live -= count

    def _call_on(self, node: _Node, ref: Any, lost: Optional[str] = None) -> Any:
        """Waits for an actor call; a dead actor marks its node dead and raises SandboxLostError."""
        try:
            return ray.get(ref)
        except RayActorError as e:
            with self._lock:
                node.alive = False
            raise SandboxLostError(lost or "(run)", node.node_id, e) from e

    # ---- templates -------------------------------------------------------------------------
    def load_template(self, name: str, *, builtin: Optional[str] = None, path: Optional[str] = None,
                      file: Optional[str] = None) -> str:
        """Registers a template under `name`; nodes load it the first time work for it lands there.
        `builtin`: a built-in ("bare"); `path`: a template file at a path every node sees (shared
        storage); `file`: a template file on this machine, shipped through the object store (read
        now, once)."""
        if sum(x is not None for x in (builtin, path, file)) != 1:
            raise ValueError("give exactly one of builtin=, path= or file=")
        if file is not None:
            with open(file, "rb") as f:
                source = TemplateSource(data=ray.put(f.read()))
        else:
            source = TemplateSource(builtin=builtin, path=path)
        with self._lock:
            self._templates[name] = source
        return name

    def _source(self, name: str) -> TemplateSource:
        with self._lock:
            if name not in self._templates:
                raise KeyError(f"unknown template {name!r}: load_template() it first")
            return self._templates[name]

    # ---- work ------------------------------------------------------------------------------
    def submit(self, argv: Optional[Sequence[str]] = None, *, code: Optional[str] = None, template: str = "bare",
               stdin: Optional[str] = None, env: Optional[Dict[str, str]] = None, cwd: Optional[str] = None,
               timeout_ms: Optional[int] = None) -> "RunFuture":
        """Starts `run` and returns at once; `.result()` waits for it."""
        params = _exec_params(argv, code, stdin, env, cwd, timeout_ms)
        return RunFuture(self, template, self._source(template), params)

    def run(self, argv: Optional[Sequence[str]] = None, **kw: Any) -> ExecResult:
        """Forks a fresh sandbox on the freest node, runs argv (or Python `code=`, on a Linux template)
        in it, kills it. A run whose node dies is retried once on another node (its sandbox's
        effects died with the node). `result.raw["node_id"]` says where it ran."""
        return self.submit(argv, **kw).result()

    def fork(self, template: str, n: int) -> List[PoolSandbox]:
        """Forks `n` sandboxes of `template`, spread over the nodes by free capacity."""
        source = self._source(template)
        nodes = self._take(n)
        per: Dict[str, List[_Node]] = {}
        for node in nodes:
            per.setdefault(node.node_id, []).append(node)
        calls = [(group[0], group[0].actor.fork.remote(template, source, len(group))) for group in per.values()]
        out: List[PoolSandbox] = []
        failed: Optional[BaseException] = None
        for node, ref in calls:
            count = len(per[node.node_id])
            try:
                ids = self._call_on(node, ref)
            except BaseException as e:  # noqa: BLE001 - released below, first error raised
                self._release(node, count)
                failed = failed or e
                continue
            out.extend(PoolSandbox(self, node, sid, template) for sid in ids)
        if failed is not None:
            for sb in out:
                sb.kill()
            raise failed
        return out

    def shutdown(self) -> None:
        """Stops every node's worker (its sandboxes die with it)."""
        with self._lock:
            nodes, self._nodes = list(self._nodes.values()), {}
        for n in nodes:
            if n.alive:
                try:
                    ray.get(n.actor.stop.remote(), timeout=10)
                except Exception:  # noqa: BLE001 - a dead or stuck actor is killed below
                    pass
            ray.kill(n.actor)

    def __enter__(self) -> "SandboxPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()


class RunFuture:
    """A `run` in flight on one node (see SandboxPool.submit). Its slot on the node counts against the
    node's free capacity until `result()` has been called."""

    def __init__(self, pool: SandboxPool, template: str, source: TemplateSource, params: Dict[str, Any]) -> None:
        self._pool = pool
        self._args = (template, source, params)
        self._outcome: Optional[tuple] = None
        self._start()

    def _start(self) -> None:
        (self._node,) = self._pool._take(1)
        self._ref = self._node.actor.run.remote(*self._args)

    def result(self) -> ExecResult:
        """Waits for the run; a second call returns (or raises) the same outcome."""
        if self._outcome is None:
            try:
                self._outcome = (self._wait(), None)
            except BaseException as e:  # noqa: BLE001 - kept for a second call
                self._outcome = (None, e)
        result, error = self._outcome
        if error is not None:
            raise error
        return result  # type: ignore[return-value]

    def _wait(self) -> ExecResult:
        for attempt in (1, 2):
            node, ref = self._node, self._ref
            try:
                return ExecResult._from(self._pool._call_on(node, ref))
            except SandboxLostError:
                if attempt == 2:
                    raise
                self._start()  # the dead node is marked: this picks another
            finally:
                self._pool._release(node, 1)
        raise AssertionError("unreachable")
