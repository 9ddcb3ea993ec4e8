"""Synchronous and asyncio APIs. Both mirror the TypeScript client:

    with Zeroboot.start() as zb:                       async with await AsyncZeroboot.start() as zb:
        t = zb.load_template(builtin="bare")               t = await zb.load_template(builtin="bare")
        with zb.fork(t) as sb:                             async with await zb.fork(t) as sb:
            r = sb.exec(["echo", "hi"])                        r = await sb.exec(["echo", "hi"])
            c = sb.run_code("1 + 1")                           c = await sb.run_code("1 + 1")
        zb.run_code("print(2)")                            await zb.run_code("print(2)")
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import queue
import threading
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Dict, Iterator, List, Optional, Sequence, Union, overload

from ._conn import Connection, LoopConnection, OutputHandler, ThreadConnection
from ._errors import RpcError, WorkerExitedError
from ._generated import CodeError, Language, RequestCancelledError, error_from_code


@dataclass(frozen=True)
class Template:
    id: str
    memory_bytes: int
    depth: int = 0
    """Branches between it and the template its memory is mapped from (0: built, loaded or full copy)."""
    own_bytes: int = 0
    """Memory it holds itself: for a branch, the pages its sandbox changed."""


@dataclass(frozen=True)
class OutputChunk:
    stream: str  # "stdout" | "stderr"
    data: str
    sandbox: str = ""  # the sandbox that printed it (for run_many, which runs in several)


def _chunk(p: Dict[str, Any]) -> OutputChunk:
    return OutputChunk(p["stream"], p["data"], p["sandbox"])


def _result(cls: type, r: Dict[str, Any], **more: Any) -> Any:
    """A result dataclass holding the ExecResult fields of an exec's result on the wire, and `more` (every
    field named): a frozen dataclass's own __init__ sets each field with object.__setattr__, ~3x the time
    of one dict update on the reply path."""
    self = object.__new__(cls)
    self.__dict__.update(stdout=r["stdout"], stderr=r["stderr"], exit_code=r.get("exit_code"), signal=r.get("signal"),
                         timed_out=r["timed_out"], truncated=r["truncated"], duration_us=r["duration_us"], raw=r,
                         **more)
    return self


@dataclass(frozen=True)
class ExecResult:
    stdout: str
    stderr: str
    exit_code: Optional[int]
    signal: Optional[int]
    timed_out: bool
    truncated: bool
    duration_us: int
    raw: Dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def _from(cls, r: Dict[str, Any]) -> "ExecResult":
        return _result(cls, r)


@dataclass(frozen=True)
class CodeResult(ExecResult):
    """An ExecResult plus the code's `result` (text of its last expression's value) and `error` (its
    uncaught exception: name, value, traceback)."""

    result: Optional[str] = None
    error: Optional[CodeError] = None

    @classmethod
    def _from(cls, r: Dict[str, Any]) -> "CodeResult":
        return _result(cls, r, result=r.get("result"), error=r.get("error"))


@dataclass(frozen=True)
class RunResult(ExecResult):
    """An ExecResult of `run`: also the sandbox it ran in (already killed) and its fork time."""
    sandbox: str = ""
    fork_us: int = 0

    @classmethod
    def _from(cls, r: Dict[str, Any]) -> "RunResult":
        return _result(cls, r, sandbox=r["sandbox"], fork_us=r["fork_us"])


def _run_outcomes(r: Dict[str, Any], method: str) -> List[Union[RunResult, RpcError]]:
    out: List[Union[RunResult, RpcError]] = []
    for x in r["results"]:
        if "error" in x:
            e = x["error"]
            out.append(error_from_code(e["code"], e["message"], e.get("data"), method))
        else:
            out.append(RunResult._from(x))
    return out


class CancelToken:
    """Cancels synchronous calls from another thread: `token.cancel()` sends `$/cancelRequest` for every
    call made with it; those calls then raise RequestCancelledError."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cancelled = False
        self._callbacks: List[Callable[[], None]] = []

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            cbs, self._callbacks = self._callbacks, []
        for cb in cbs:
            cb()

    def _register(self, cb: Callable[[], None]) -> Callable[[], None]:
        with self._lock:
            if not self._cancelled:
                self._callbacks.append(cb)
                return lambda: self._unregister(cb)
        cb()
        return lambda: None

    def _unregister(self, cb: Callable[[], None]) -> None:
        with self._lock:
            if cb in self._callbacks:
                self._callbacks.remove(cb)


TemplateLike = Union[Template, str]


def _tid(t: TemplateLike) -> str:
    return t if isinstance(t, str) else t.id


def _fork_params(template: TemplateLike, network: Union[Dict[str, Any], bool, None]) -> Dict[str, Any]:
    params: Dict[str, Any] = {"template": _tid(template)}
    if network is not None:
        params["network"] = network
    return params


def _exec_params(target: Dict[str, Any], argv: Sequence[str], stdin, env, cwd, timeout_ms, output_cap,
                 stream) -> Dict[str, Any]:
    """Params of sandbox.exec (target: {"sandbox"}) or sandbox.run (target: {"template", "count"?})."""
    p: Dict[str, Any] = {**target, "argv": list(argv)}
    if stdin is not None:
        p["stdin"] = stdin
    if env is not None:
        p["env"] = dict(env)
    if cwd is not None:
        p["cwd"] = cwd
    if timeout_ms is not None:
        p["timeout_ms"] = timeout_ms
    if output_cap is not None:
        p["output_cap"] = output_cap
    if stream:
        p["stream"] = True
    return p


def _code_params(target: Dict[str, str], code: str, language: Language, context, env, cwd, timeout_ms, output_cap,
                 stream) -> Dict[str, Any]:
    p: Dict[str, Any] = {**target, "language": language, "code": code}
    if context is not None:
        p["context"] = context
    if env is not None:
        p["env"] = dict(env)
    if cwd is not None:
        p["cwd"] = cwd
    if timeout_ms is not None:
        p["timeout_ms"] = timeout_ms
    if output_cap is not None:
        p["output_cap"] = output_cap
    if stream:
        p["stream"] = True
    return p


def _write_params(sandbox: str, path: str, data: Union[str, bytes], mode: Optional[int]) -> Dict[str, Any]:
    p: Dict[str, Any] = {"sandbox": sandbox, "path": path}
    if isinstance(data, str):
        p["data"] = data
    else:
        p["data_base64"] = base64.b64encode(data).decode("ascii")
    if mode is not None:
        p["mode"] = mode
    return p


def _read_params(sandbox: str, path: str, max_bytes: Optional[int]) -> Dict[str, Any]:
    p: Dict[str, Any] = {"sandbox": sandbox, "path": path, "encoding": "base64"}
    if max_bytes is not None:
        p["max_bytes"] = max_bytes
    return p


def _template(r: Dict[str, Any]) -> Template:
    return Template(r["template"], r["memory_bytes"], r.get("depth", 0), r.get("memory", {}).get("own_bytes", 0))


def _unload_params(template: str, force: bool, keep_sandboxes: bool) -> Dict[str, Any]:
    p: Dict[str, Any] = {"template": template, "force": force}
    if keep_sandboxes:
        p["keep_sandboxes"] = True
    return p


def _snapshot_params(sandbox: str, full_copy: bool) -> Dict[str, Any]:
    p: Dict[str, Any] = {"sandbox": sandbox}
    if full_copy:
        p["full_copy"] = True
    return p


def _load_params(builtin: Optional[str], path: Optional[str]) -> Dict[str, Any]:
    if (builtin is None) == (path is None):
        raise ValueError("give exactly one of builtin= or path=")
    return {"builtin": builtin} if builtin is not None else {"path": path}


class _Worker:
    """What the synchronous and asyncio workers share: the spawned process behind the connection, and the
    template `run_code` forks by default (the last one loaded)."""

    _last_template: Optional[str] = None

    def _run_target(self, template: Optional[TemplateLike],
                    network: Union[Dict[str, Any], bool, None]) -> Dict[str, Any]:
        t = template if template is not None else self._last_template
        if t is None:
            raise ValueError("run_code: no template loaded; load one or pass template=")
        return _fork_params(t, network)

    def _loaded(self, t: Template) -> Template:
        self._last_template = t.id
        return t

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    @property
    def binary(self) -> str:
        return self._conn.binary

    @property
    def pid(self) -> int:
        return self._conn.proc.pid

    @property
    def alive(self) -> bool:
        return self._conn.death is None and self._conn.proc.poll() is None


# ------------------------------------------------------------------------------------------------
# synchronous API


class Zeroboot(_Worker):
    """A running `zeroboot serve` worker (synchronous API; thread-safe: calls from many threads run
    concurrently in the worker)."""

    def __init__(self, conn: Connection) -> None:
        super().__init__(conn)
        self._sandboxes: Dict[str, "Sandbox"] = {}
        self._lock = threading.Lock()

    @classmethod
    def start(
        cls,
        binary: Optional[str] = None,
        args: Sequence[str] = ("serve",),
        env: Optional[Dict[str, str]] = None,
        stderr_lines: int = 20,
        on_stderr: Optional[Callable[[str], None]] = None,
    ) -> "Zeroboot":
        """Spawns the worker and checks it answers (`worker.info`)."""
        zb = cls(ThreadConnection(binary, args, env, stderr_lines, on_stderr))
        try:
            zb.info()
        except BaseException:
            zb._conn.proc.kill()
            raise
        return zb

    def call(self, method: str, params: Optional[Dict[str, Any]] = None, *, cancel: Optional[CancelToken] = None,
             timeout: Optional[float] = None, on_output: Optional[OutputHandler] = None) -> Any:
        """Calls any method of the schema. `cancel` or Ctrl-C (or `timeout` seconds passing) sends
        `$/cancelRequest` and raises once the worker answers. `on_output` receives the params of the
        call's `sandbox.output` notifications (on whichever calling thread reads them)."""
        rid, fut = self._conn.request(method, params or {}, on_output)
        undo = cancel._register(lambda: self._conn.cancel(rid)) if cancel else None
        try:
            try:
                return self._conn.wait(fut, timeout)
            except (KeyboardInterrupt, concurrent.futures.TimeoutError):
                self._conn.cancel(rid)
                try:
                    self._conn.wait(fut, 10)
                except Exception:
                    pass
                raise
        finally:
            if undo is not None:
                undo()

    def info(self) -> Dict[str, Any]:
        return self.call("worker.info")

    def ping(self) -> None:
        """A round trip that does nothing in the worker."""
        self.call("worker.ping")

    def discover(self) -> Dict[str, Any]:
        return self.call("rpc.discover")

    def load_template(self, *, builtin: Optional[str] = None, path: Optional[str] = None) -> Template:
        return self._loaded(_template(self.call("template.load", _load_params(builtin, path))))

    def run_code(self, code: str, language: Language = "python", *, template: Optional[TemplateLike] = None,
                 env: Optional[Dict[str, str]] = None, cwd: Optional[str] = None, timeout_ms: Optional[int] = None,
                 output_cap: Optional[int] = None, network: Union[Dict[str, Any], bool, None] = None,
                 cancel: Optional[CancelToken] = None) -> CodeResult:
        """Runs code in a fresh sandbox forked from `template` (default: the last one loaded), then kills it.
        `network` as for `fork`."""
        params = _code_params(self._run_target(template, network), code, language, None, env, cwd, timeout_ms, output_cap,
                              False)
        return CodeResult._from(self.call("sandbox.run_code", params, cancel=cancel))

    def templates(self) -> List[Dict[str, Any]]:
        return self.call("template.list")["templates"]

    def unload_template(self, template: TemplateLike, force: bool = False, *,
                        keep_sandboxes: bool = False) -> Dict[str, Any]:
        """Unloads a template; refused while its sandboxes live unless `force` (kills them) or
        `keep_sandboxes` (they run on and keep the memory they were forked from)."""
        return self.call("template.unload", _unload_params(_tid(template), force, keep_sandboxes))

    def save_template(self, template: TemplateLike, path: str) -> Dict[str, Any]:
        return self.call("template.save", {"template": _tid(template), "path": path})

    def fork(self, template: TemplateLike, network: Union[Dict[str, Any], bool, None] = None) -> "Sandbox":
        """Forks one sandbox; `network` is a policy ({"allow": [...], "deny": [...]}), False for none, or None for the template's (none unless its spec has one)."""
        r = self.call("sandbox.fork", _fork_params(template, network))
        return self._adopt(r["sandbox"], _tid(template), r["fork_us"])

    def fork_many(
        self, template: TemplateLike, count: int, network: Union[Dict[str, Any], bool, None] = None
    ) -> List["Sandbox"]:
        r = self.call("sandbox.fork", dict(_fork_params(template, network), count=count))
        return [self._adopt(s["sandbox"], _tid(template), s["fork_us"]) for s in r["sandboxes"]]

    @overload
    def run(self, code: str, language: Language = "python", **kw: Any) -> CodeResult: ...

    @overload
    def run(self, template: TemplateLike, argv: Sequence[str], **kw: Any) -> RunResult: ...

    def run(self, first: Any, second: Any = "python", **kw: Any) -> Union[CodeResult, RunResult]:
        """Two one-shots (fork, run, kill in one call), told apart by the second argument:
        `zb.run(code, language="python")` runs code as `run_code` does (the prototype's one-liner);
        `zb.run(template, argv)` runs a command as `run_command` does."""
        if isinstance(second, str):
            return self.run_code(first, second, **kw)  # type: ignore[arg-type]
        return self.run_command(first, second, **kw)

    def run_command(self, template: TemplateLike, argv: Sequence[str], *, stdin: Optional[str] = None,
                    env: Optional[Dict[str, str]] = None, cwd: Optional[str] = None,
                    timeout_ms: Optional[int] = None, output_cap: Optional[int] = None,
                    on_output: Optional[Callable[[OutputChunk], None]] = None, cancel: Optional[CancelToken] = None,
                    network: Union[Dict[str, Any], bool, None] = None) -> RunResult:
        """Forks a sandbox, runs argv in it and kills it, in one round trip (`sandbox.run`). Raises the
        exec's error (the sandbox is killed either way). `network` as for `fork`."""
        params = _exec_params(_fork_params(template, network), argv, stdin, env, cwd, timeout_ms, output_cap,
                              on_output is not None)
        handler = (lambda p: on_output(_chunk(p))) if on_output else None
        return RunResult._from(self.call("sandbox.run", params, cancel=cancel, on_output=handler))

    def run_many(self, template: TemplateLike, argv: Sequence[str], count: int, *, stdin: Optional[str] = None,
                 env: Optional[Dict[str, str]] = None, cwd: Optional[str] = None, timeout_ms: Optional[int] = None,
                 output_cap: Optional[int] = None, on_output: Optional[Callable[[OutputChunk], None]] = None,
                 cancel: Optional[CancelToken] = None,
                 network: Union[Dict[str, Any], bool, None] = None) -> List[Union[RunResult, RpcError]]:
        """`run` in `count` fresh forks at once: one outcome per run, a RunResult or the RpcError it failed
        with, in no particular order (`OutputChunk.sandbox` tells streamed chunks apart)."""
        params = _exec_params(dict(_fork_params(template, network), count=count), argv, stdin, env, cwd, timeout_ms,
                              output_cap, on_output is not None)
        handler = (lambda p: on_output(_chunk(p))) if on_output else None
        return _run_outcomes(self.call("sandbox.run", params, cancel=cancel, on_output=handler), "sandbox.run")

    def _adopt(self, sid: str, template: str, fork_us: int) -> "Sandbox":
        sb = Sandbox(self, sid, template, fork_us)
        with self._lock:
            self._sandboxes[sid] = sb
        return sb

    def sandboxes(self) -> List[Dict[str, Any]]:
        return self.call("sandbox.list")["sandboxes"]

    def kill(self, signal: int = 9) -> None:
        """Sends a signal to the worker process (tests use it to simulate a crash)."""
        self._conn.proc.send_signal(signal)

    def stop(self, grace: float = 5.0) -> Optional[int]:
        """Kills this client's sandboxes, sends `shutdown` then `exit`, waits for the worker (SIGKILL
        after `grace` seconds). Returns its exit status. Safe to call twice or after the worker died."""
        if self.alive:
            with self._lock:
                sbs = list(self._sandboxes.values())
            for sb in sbs:
                try:
                    sb.kill()
                except Exception:
                    pass
            try:
                self.call("shutdown")
                self._conn.notify("exit")
            except Exception:
                pass
            self._conn.close_stdin()
        if not self._conn.wait_exit(grace):
            self._conn.proc.kill()
            self._conn.wait_exit(60)
        return self._conn.proc.returncode

    def __enter__(self) -> "Zeroboot":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class Sandbox:
    """A sandbox forked from a template. A context manager: leaving it kills the sandbox."""

    def __init__(self, worker: Zeroboot, sid: str, template: str, fork_us: int) -> None:
        self.worker = worker
        self.id = sid
        self.template = template
        self.fork_us = fork_us
        self._killed = False

    def __repr__(self) -> str:
        return f"Sandbox({self.id!r}, template={self.template!r})"

    def exec(self, argv: Sequence[str], *, stdin: Optional[str] = None, env: Optional[Dict[str, str]] = None,
             cwd: Optional[str] = None, timeout_ms: Optional[int] = None, output_cap: Optional[int] = None,
             on_output: Optional[Callable[[OutputChunk], None]] = None,
             cancel: Optional[CancelToken] = None) -> ExecResult:
        """Runs argv and waits for it. `on_output` receives streamed chunks (called on whichever calling
        thread reads them)."""
        params = _exec_params({"sandbox": self.id}, argv, stdin, env, cwd, timeout_ms, output_cap,
                              on_output is not None)
        handler = (lambda p: on_output(_chunk(p))) if on_output else None
        return ExecResult._from(self.worker.call("sandbox.exec", params, cancel=cancel, on_output=handler))

    def run_code(self, code: str, language: Language = "python", *, context: Optional[str] = None,
                 env: Optional[Dict[str, str]] = None, cwd: Optional[str] = None, timeout_ms: Optional[int] = None,
                 output_cap: Optional[int] = None, on_output: Optional[Callable[[OutputChunk], None]] = None,
                 cancel: Optional[CancelToken] = None) -> CodeResult:
        """Runs code like a notebook cell: `result` is the text of its last expression's value, `error` its
        uncaught exception. With `context`, cells share one interpreter's state in this sandbox."""
        params = _code_params({"sandbox": self.id}, code, language, context, env, cwd, timeout_ms, output_cap,
                              on_output is not None)
        handler = (lambda p: on_output(_chunk(p))) if on_output else None
        return CodeResult._from(self.worker.call("sandbox.run_code", params, cancel=cancel, on_output=handler))

    def contexts(self) -> List[Dict[str, Any]]:
        """The persistent contexts alive in the sandbox: [{"name", "language"}]."""
        return self.worker.call("sandbox.contexts", {"sandbox": self.id})["contexts"]

    def stream(self, argv: Sequence[str], **kw: Any) -> "ExecStream":
        """Runs argv with streamed output: `s = sb.stream(argv); for chunk in s: ...; s.result`."""
        return ExecStream(self, argv, kw)

    def write_file(self, path: str, data: Union[str, bytes], *, mode: Optional[int] = None,
                   cancel: Optional[CancelToken] = None) -> int:
        """Writes data (str as UTF-8) to path, replacing any file there, and returns the byte count. The
        worker moves it in chunks and makes it visible only once complete; over the limits: FileTooLargeError."""
        return self.worker.call("sandbox.write_file", _write_params(self.id, path, data, mode), cancel=cancel)["bytes"]

    def read_file(self, path: str, *, max_bytes: Optional[int] = None, cancel: Optional[CancelToken] = None) -> bytes:
        """Reads path as bytes; a file larger than max_bytes (default: the worker's limit) is FileTooLargeError."""
        r = self.worker.call("sandbox.read_file", _read_params(self.id, path, max_bytes), cancel=cancel)
        return base64.b64decode(r["data"])

    def snapshot(self, *, full_copy: bool = False) -> Template:
        """Branches this sandbox: its state and the pages it changed become a new template layered over
        its own (fork it like any template: `worker.fork_many(sb.snapshot(), n)`); the sandbox carries on.
        `full_copy` copies its whole memory into a template of its own instead."""
        return _template(self.worker.call("sandbox.snapshot", _snapshot_params(self.id, full_copy)))

    def branch(self, count: int = 1) -> List["Sandbox"]:
        """`count` running copies of this sandbox as it is now: a snapshot forked `count` times. The
        snapshot is released at once; the copies keep what they need of it until they are killed."""
        t = self.snapshot()
        try:
            return self.worker.fork_many(t, count)
        finally:
            self.worker.unload_template(t, keep_sandboxes=True)

    def stats(self) -> Dict[str, Any]:
        return self.worker.call("sandbox.stats", {"sandbox": self.id})

    def kill(self) -> None:
        """Kills the sandbox; a second kill, or a kill after the worker died, does nothing."""
        if self._killed:
            return
        self._killed = True
        with self.worker._lock:
            self.worker._sandboxes.pop(self.id, None)
        if self.worker.alive:
            self.worker.call("sandbox.kill", {"sandbox": self.id})

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self.kill()
        except WorkerExitedError:
            pass


_END = object()


class ExecStream:
    """Iterator over the output chunks of one exec; `result` (after the iteration) is its ExecResult.
    Iterating raises the exec's error, if it failed."""

    def __init__(self, sb: Sandbox, argv: Sequence[str], kw: Dict[str, Any]) -> None:
        self._q: "queue.Queue[Any]" = queue.Queue()
        self._fut: concurrent.futures.Future = concurrent.futures.Future()

        def run() -> None:
            try:
                self._fut.set_result(sb.exec(argv, on_output=self._q.put, **kw))
            except BaseException as e:  # noqa: BLE001 - handed to the consumer
                self._fut.set_exception(e)
            finally:
                self._q.put(_END)

        threading.Thread(target=run, daemon=True).start()

    def __iter__(self) -> Iterator[OutputChunk]:
        while True:
            item = self._q.get()
            if item is _END:
                break
            yield item
        self._fut.result()

    @property
    def result(self) -> ExecResult:
        return self._fut.result()


# ------------------------------------------------------------------------------------------------
# asyncio API


class AsyncZeroboot(_Worker):
    """A running `zeroboot serve` worker (asyncio API). Cancelling the task of a call sends
    `$/cancelRequest`; the call raises asyncio.CancelledError."""

    def __init__(self, conn: Connection) -> None:
        super().__init__(conn)
        self._sandboxes: Dict[str, "AsyncSandbox"] = {}

    @classmethod
    async def start(
        cls,
        binary: Optional[str] = None,
        args: Sequence[str] = ("serve",),
        env: Optional[Dict[str, str]] = None,
        stderr_lines: int = 20,
        on_stderr: Optional[Callable[[str], None]] = None,
    ) -> "AsyncZeroboot":
        conn = await LoopConnection.open(binary, args, env, stderr_lines, on_stderr)
        zb = cls(conn)
        try:
            await zb.info()
        except BaseException:
            conn.proc.kill()
            raise
        return zb

    async def call(self, method: str, params: Optional[Dict[str, Any]] = None, *,
                   on_output: Optional[OutputHandler] = None) -> Any:
        """Calls any method of the schema; `on_output` receives the params of the call's
        `sandbox.output` notifications, on the event loop, all before the call returns."""
        rid, fut = self._conn.request(method, params or {}, on_output)
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            self._conn.cancel(rid)
            # The worker still answers (-32800, or the call's own outcome if it won the race): consume it.
            fut.add_done_callback(lambda f: f.cancelled() or f.exception())
            raise

    async def info(self) -> Dict[str, Any]:
        return await self.call("worker.info")

    async def ping(self) -> None:
        """A round trip that does nothing in the worker."""
        await self.call("worker.ping")

    async def discover(self) -> Dict[str, Any]:
        return await self.call("rpc.discover")

    async def load_template(self, *, builtin: Optional[str] = None, path: Optional[str] = None) -> Template:
        return self._loaded(_template(await self.call("template.load", _load_params(builtin, path))))

    async def run_code(self, code: str, language: Language = "python", *,
                       template: Optional[TemplateLike] = None, env: Optional[Dict[str, str]] = None, cwd: Optional[str] = None, timeout_ms: Optional[int] = None,
                       output_cap: Optional[int] = None,
                       network: Union[Dict[str, Any], bool, None] = None) -> CodeResult:
        """See Zeroboot.run_code."""
        params = _code_params(self._run_target(template, network), code, language, None, env, cwd, timeout_ms, output_cap,
                              False)
        return CodeResult._from(await self.call("sandbox.run_code", params))

    async def templates(self) -> List[Dict[str, Any]]:
        return (await self.call("template.list"))["templates"]

    async def unload_template(self, template: TemplateLike, force: bool = False, *,
                              keep_sandboxes: bool = False) -> Dict[str, Any]:
        """See Zeroboot.unload_template."""
        return await self.call("template.unload", _unload_params(_tid(template), force, keep_sandboxes))

    async def save_template(self, template: TemplateLike, path: str) -> Dict[str, Any]:
        return await self.call("template.save", {"template": _tid(template), "path": path})

    async def fork(self, template: TemplateLike, network: Union[Dict[str, Any], bool, None] = None) -> "AsyncSandbox":
        """Forks one sandbox; `network` is a policy ({"allow": [...], "deny": [...]}), False for none, or None for the template's (none unless its spec has one)."""
        r = await self.call("sandbox.fork", _fork_params(template, network))
        return self._adopt(r["sandbox"], _tid(template), r["fork_us"])

    async def fork_many(
        self, template: TemplateLike, count: int, network: Union[Dict[str, Any], bool, None] = None
    ) -> List["AsyncSandbox"]:
        r = await self.call("sandbox.fork", dict(_fork_params(template, network), count=count))
        return [self._adopt(s["sandbox"], _tid(template), s["fork_us"]) for s in r["sandboxes"]]

    @overload
    async def run(self, code: str, language: Language = "python", **kw: Any) -> CodeResult: ...

    @overload
    async def run(self, template: TemplateLike, argv: Sequence[str], **kw: Any) -> RunResult: ...

    async def run(self, first: Any, second: Any = "python", **kw: Any) -> Union[CodeResult, RunResult]:
        """See Zeroboot.run."""
        if isinstance(second, str):
            return await self.run_code(first, second, **kw)  # type: ignore[arg-type]
        return await self.run_command(first, second, **kw)

    async def run_command(self, template: TemplateLike, argv: Sequence[str], *, stdin: Optional[str] = None,
                          env: Optional[Dict[str, str]] = None, cwd: Optional[str] = None,
                          timeout_ms: Optional[int] = None, output_cap: Optional[int] = None,
                          on_output: Optional[Callable[[OutputChunk], None]] = None,
                          network: Union[Dict[str, Any], bool, None] = None) -> RunResult:
        """See Zeroboot.run_command."""
        params = _exec_params(_fork_params(template, network), argv, stdin, env, cwd, timeout_ms, output_cap,
                              on_output is not None)
        handler = (lambda p: on_output(_chunk(p))) if on_output else None
        return RunResult._from(await self.call("sandbox.run", params, on_output=handler))

    async def run_many(self, template: TemplateLike, argv: Sequence[str], count: int, *,
                       stdin: Optional[str] = None, env: Optional[Dict[str, str]] = None, cwd: Optional[str] = None,
                       timeout_ms: Optional[int] = None, output_cap: Optional[int] = None,
                       on_output: Optional[Callable[[OutputChunk], None]] = None,
                       network: Union[Dict[str, Any], bool, None] = None) -> List[Union[RunResult, RpcError]]:
        """See Zeroboot.run_many."""
        params = _exec_params(dict(_fork_params(template, network), count=count), argv, stdin, env, cwd, timeout_ms,
                              output_cap, on_output is not None)
        handler = (lambda p: on_output(_chunk(p))) if on_output else None
        return _run_outcomes(await self.call("sandbox.run", params, on_output=handler), "sandbox.run")

    def _adopt(self, sid: str, template: str, fork_us: int) -> "AsyncSandbox":
        sb = AsyncSandbox(self, sid, template, fork_us)
        self._sandboxes[sid] = sb
        return sb

    async def sandboxes(self) -> List[Dict[str, Any]]:
        return (await self.call("sandbox.list"))["sandboxes"]

    def kill(self, signal: int = 9) -> None:
        self._conn.proc.send_signal(signal)

    async def stop(self, grace: float = 5.0) -> Optional[int]:
        if self.alive:
            await asyncio.gather(*(sb.kill() for sb in list(self._sandboxes.values())), return_exceptions=True)
            try:
                await self.call("shutdown")
                self._conn.notify("exit")
            except Exception:
                pass
            self._conn.close_stdin()
        if not await asyncio.to_thread(self._conn.exited.wait, grace):
            self._conn.proc.kill()
            await asyncio.to_thread(self._conn.exited.wait)
        return self._conn.proc.returncode

    async def __aenter__(self) -> "AsyncZeroboot":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()


class AsyncSandbox:
    def __init__(self, worker: AsyncZeroboot, sid: str, template: str, fork_us: int) -> None:
        self.worker = worker
        self.id = sid
        self.template = template
        self.fork_us = fork_us
        self._killed = False

    def __repr__(self) -> str:
        return f"AsyncSandbox({self.id!r}, template={self.template!r})"

    async def exec(self, argv: Sequence[str], *, stdin: Optional[str] = None, env: Optional[Dict[str, str]] = None,
                   cwd: Optional[str] = None, timeout_ms: Optional[int] = None, output_cap: Optional[int] = None,
                   on_output: Optional[Callable[[OutputChunk], None]] = None) -> ExecResult:
        """Runs argv and waits for it. `on_output` receives streamed chunks on the event loop."""
        params = _exec_params({"sandbox": self.id}, argv, stdin, env, cwd, timeout_ms, output_cap,
                              on_output is not None)
        handler = (lambda p: on_output(_chunk(p))) if on_output else None
        return ExecResult._from(await self.worker.call("sandbox.exec", params, on_output=handler))

    async def run_code(self, code: str, language: Language = "python", *, context: Optional[str] = None,
                       env: Optional[Dict[str, str]] = None, cwd: Optional[str] = None,
                       timeout_ms: Optional[int] = None, output_cap: Optional[int] = None,
                       on_output: Optional[Callable[[OutputChunk], None]] = None) -> CodeResult:
        """See Sandbox.run_code; `on_output` receives streamed chunks on the event loop."""
        params = _code_params({"sandbox": self.id}, code, language, context, env, cwd, timeout_ms, output_cap,
                              on_output is not None)
        handler = (lambda p: on_output(_chunk(p))) if on_output else None
        return CodeResult._from(await self.worker.call("sandbox.run_code", params, on_output=handler))

    async def contexts(self) -> List[Dict[str, Any]]:
        """See Sandbox.contexts."""
        return (await self.worker.call("sandbox.contexts", {"sandbox": self.id}))["contexts"]

    def stream(self, argv: Sequence[str], **kw: Any) -> "AsyncExecStream":
        """`s = sb.stream(argv); async for chunk in s: ...; r = await s.result`."""
        return AsyncExecStream(self, argv, kw)

    async def write_file(self, path: str, data: Union[str, bytes], *, mode: Optional[int] = None) -> int:
        """See Sandbox.write_file."""
        return (await self.worker.call("sandbox.write_file", _write_params(self.id, path, data, mode)))["bytes"]

    async def read_file(self, path: str, *, max_bytes: Optional[int] = None) -> bytes:
        """See Sandbox.read_file."""
        r = await self.worker.call("sandbox.read_file", _read_params(self.id, path, max_bytes))
        return base64.b64decode(r["data"])

    async def snapshot(self, *, full_copy: bool = False) -> Template:
        """See Sandbox.snapshot."""
        return _template(await self.worker.call("sandbox.snapshot", _snapshot_params(self.id, full_copy)))

    async def branch(self, count: int = 1) -> List["AsyncSandbox"]:
        """See Sandbox.branch."""
        t = await self.snapshot()
        try:
            return await self.worker.fork_many(t, count)
        finally:
            await self.worker.unload_template(t, keep_sandboxes=True)

    async def stats(self) -> Dict[str, Any]:
        return await self.worker.call("sandbox.stats", {"sandbox": self.id})

    async def kill(self) -> None:
        if self._killed:
            return
        self._killed = True
        self.worker._sandboxes.pop(self.id, None)
        if self.worker.alive:
            await self.worker.call("sandbox.kill", {"sandbox": self.id})

    async def __aenter__(self) -> "AsyncSandbox":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        try:
            await self.kill()
        except WorkerExitedError:
            pass


class AsyncExecStream:
    def __init__(self, sb: AsyncSandbox, argv: Sequence[str], kw: Dict[str, Any]) -> None:
        self._q: "asyncio.Queue[Any]" = asyncio.Queue()
        self.result: "asyncio.Task[ExecResult]" = asyncio.ensure_future(self._run(sb, argv, kw))

    async def _run(self, sb: AsyncSandbox, argv: Sequence[str], kw: Dict[str, Any]) -> ExecResult:
        try:
            return await sb.exec(argv, on_output=self._q.put_nowait, **kw)
        finally:
            self._q.put_nowait(_END)

    async def __aiter__(self) -> AsyncIterator[OutputChunk]:
        while True:
            item = await self._q.get()
            if item is _END:
                break
            yield item
        await self.result


__all__ = [
    "AsyncExecStream", "AsyncSandbox", "AsyncZeroboot", "CancelToken", "CodeResult", "ExecResult", "ExecStream",
    "OutputChunk", "RequestCancelledError", "RunResult", "Sandbox", "Template", "Zeroboot",
]
