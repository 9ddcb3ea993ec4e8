"""The transport: a `zeroboot serve` child process spoken to with JSON-RPC 2.0 in LSP framing
(Content-Length headers) over its stdin/stdout.

Two ways to read its answers, one protocol core (`Connection`: frames, pending calls, streamed output,
the worker's death):

- `ThreadConnection` (the synchronous API): a calling thread that waits for its answer reads the
  output itself, setting the answers of whatever arrives (other threads' too), and hands
  the reading over when its own answer is in; any thread may call. One caller at a time reads exactly
  as a bare pipe client would: no reader thread to wake, no thread switch per answer.
- `LoopConnection` (the asyncio API): the event loop itself reads and writes the pipes, and completes
  `asyncio` futures where it runs: an answer costs no thread wake-up and no hop into the loop.

A second thread keeps the tail of the worker's stderr for error messages in both."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import importlib.metadata
import itertools
import json
import os
import select
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

from ._errors import WorkerExitedError, WorkerSpawnError
from ._generated import error_from_code

_PACKAGE_DIR = Path(__file__).resolve().parent.parent  # clients/python in a source checkout


def _bundled_binary() -> Optional[Path]:
    """The `zeroboot` binary installed by the same wheel as this package (the wheel puts it in the
    environment's scripts directory), or None when this package did not come from such a wheel."""
    try:
        dist = importlib.metadata.distribution("zeroboot")
    except importlib.metadata.PackageNotFoundError:
        return None
    # Another installation of the distribution (not this copy of the package) does not count.
    if Path(dist.locate_file("zeroboot/__init__.py")).resolve() != Path(__file__).resolve().parent / "__init__.py":
        return None
    for f in dist.files or ():
        if f.name == "zeroboot" and f.parent.name in ("bin", "Scripts"):
            return Path(dist.locate_file(f)).resolve()
    return None


def find_binary(explicit: Optional[str] = None) -> str:
    """The worker binary: `explicit`, then $ZEROBOOT_BIN, then the binary installed with this package
    (`pip install zeroboot-*.whl`), then `zeroboot` next to the package, then
    `../../target/release/zeroboot` relative to the package (a source checkout), then PATH."""
    if explicit:
        return explicit
    env = os.environ.get("ZEROBOOT_BIN")
    if env:
        return env
    bundled = _bundled_binary()
    for candidate in (bundled, _PACKAGE_DIR / "zeroboot", _PACKAGE_DIR.parent.parent / "target" / "release" / "zeroboot"):
        if candidate is not None and candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("zeroboot") or "zeroboot"


OutputHandler = Callable[[Dict[str, Any]], None]
AnyFuture = Union["Answer", "asyncio.Future[Any]"]


class Answer:
    """A synchronous call's answer: set once by whichever thread reads it, read by the caller once it saw
    `_done` under the transport's turn lock (which orders the two), or right after its own read set it.
    A `concurrent.futures.Future` would also lock and notify its own condition for every answer, which
    nobody waits on here."""

    __slots__ = ("_done", "_value", "_error")

    def __init__(self) -> None:
        self._done = False
        self._value: Any = None
        self._error: Optional[BaseException] = None

    def done(self) -> bool:
        return self._done

    def set_result(self, value: Any) -> None:
        self._value = value
        self._done = True

    def set_exception(self, error: BaseException) -> None:
        self._error = error
        self._done = True

    def result(self) -> Any:
        if self._error is not None:
            raise self._error
        return self._value


class Frames:
    """Splits the worker's output into messages, whatever pieces it arrives in."""

    def __init__(self) -> None:
        self._buf = bytearray()  # the start of a message not yet whole

    def feed(self, data: bytes) -> List[Any]:
        buf = self._buf
        if not buf:  # the usual case: `data` starts a message; no copy of what is whole in it
            out, used = _split(data)
            if used < len(data):
                buf += memoryview(data)[used:]
            return out
        buf += data
        out, used = _split(buf)
        del buf[:used]
        return out


def _split(data: Union[bytes, bytearray]) -> tuple[List[Any], int]:
    """The whole messages at the start of `data`, and how many bytes they took. (One function for the
    header, the body and its JSON: a reply is decoded where the caches are cold, after the worker ran a
    sandbox on this CPU, and each Python call there costs about a microsecond.)"""
    out = []
    pos = 0
    while True:
        end = data.find(b"\r\n\r\n", pos)
        if end < 0:
            return out, pos
        start = end + 4
        if data.startswith(b"Content-Length: ", pos) and data.find(b"\r", pos, end) < 0:  # what the worker writes
            length = int(data[pos + 16 : end])
        else:
            length = _content_length(data[pos:end])
        if len(data) - start < length:
            return out, pos
        pos = start + length
        text = data[start:pos].decode()
        try:
            value, stop = _scan(text, 0)
        except StopIteration:  # whitespace before the value, or no value
            value, stop = _scan_padded(text)
        if stop != len(text) and text[stop:].strip():
            raise ValueError("a frame whose body holds more than one JSON value")
        out.append(value)


def _content_length(headers: Union[bytes, bytearray]) -> int:
    """The Content-Length of a message's header block (other headers are ignored)."""
    length = None
    for line in bytes(headers).split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length is None:
        raise ValueError("a frame without Content-Length")
    return length


# One encoder and decoder for every message: `json.dumps` with options builds an encoder per call. The
# decoder's C scanner is called without the Python wrapper around it (`JSONDecoder.decode`), which
# matches whitespace before and after the value with two regular expressions.
_scan = json.JSONDecoder().scan_once


def _c_encode() -> Optional[Callable[[Any], str]]:
    """`JSONEncoder(separators=(",", ":")).encode` without its two Python methods, one of which builds a C
    encoder per call: one C encoder for every message. It does not track the containers it is in (which
    the per-call one does to call a cycle a ValueError: here one ends in RecursionError), so it keeps no
    state between calls and any thread may use it. None where the interpreter has no such C encoder."""
    try:
        from json.encoder import c_encode_basestring_ascii, c_make_encoder  # type: ignore[attr-defined]

        chunks = c_make_encoder(None, json.JSONEncoder().default, c_encode_basestring_ascii, None, ":", ",",
                                False, False, True)
    except (ImportError, TypeError):
        return None

    def encode(value: Any) -> str:
        return "".join(chunks(value, 0))

    sample = {"a": [1, 2.5, None, True, "\u00e9\n"], "b": {}}
    return encode if encode(sample) == _plain_encode(sample) else None


_plain_encode = json.JSONEncoder(separators=(",", ":")).encode
_encode = _c_encode() or _plain_encode


def _scan_padded(text: str) -> tuple[Any, int]:
    """The value of a body that does not start with one: after leading whitespace, or an error."""
    pad = len(text) - len(text.lstrip())
    try:
        return _scan(text, pad)
    except StopIteration as e:  # what the scanner raises where no value starts
        raise ValueError(f"a frame whose body is not JSON (at {e.value})") from None


class Connection:
    """What both transports share: the child process, the calls waiting for answers, and the
    dispatch of what the worker sends."""

    def __init__(
        self,
        binary: Optional[str],
        args: Sequence[str],
        env: Optional[Dict[str, str]],
        stderr_lines: int,
        on_stderr: Optional[Callable[[str], None]],
    ) -> None:
        self.binary = find_binary(binary)
        try:
            self.proc = subprocess.Popen(
                [self.binary, *args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                bufsize=0,
            )
        except OSError as e:
            raise WorkerSpawnError(f"cannot start {self.binary}: {e}") from e
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._pending: Dict[int, tuple[str, AnyFuture, Optional[OutputHandler]]] = {}
        self._frames = Frames()
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=stderr_lines)
        self._on_stderr = on_stderr
        self.death: Optional[WorkerExitedError] = None
        self.exited = threading.Event()
        self._stderr_thread = threading.Thread(target=self._read_stderr, name="zeroboot-stderr", daemon=True)
        self._stderr_thread.start()

    # ---- reading -------------------------------------------------------------------------
    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self._stderr_tail.append(line)
            if self._on_stderr:
                try:
                    self._on_stderr(line)
                except Exception:
                    pass

    def _received(self, data: bytes) -> None:
        """Dispatches every whole message in `data` (and what came before it)."""
        for msg in self._frames.feed(data):
            for m in msg if isinstance(msg, list) else [msg]:
                self._dispatch(m)

    def _dispatch(self, m: Dict[str, Any]) -> None:
        if "method" in m:
            if m["method"] == "sandbox.output" and "id" not in m:
                params = m.get("params") or {}
                with self._lock:
                    entry = self._pending.get(params.get("request"))  # type: ignore[arg-type]
                if entry is not None and entry[2] is not None:
                    entry[2](params)
            return
        with self._lock:
            entry = self._pending.pop(m.get("id"), None)  # type: ignore[arg-type]
        if entry is None:
            return
        method, fut, _ = entry
        if fut.done():  # an asyncio caller that gave up (cancelled)
            return
        if "error" in m:
            e = m["error"]
            fut.set_exception(error_from_code(e.get("code", 0), e.get("message", ""), e.get("data"), method))
        else:
            fut.set_result(m.get("result"))

    def _reap(self) -> WorkerExitedError:
        """Waits for the process to end (after its output ended) and says how it ended."""
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._stderr_thread.join(timeout=1)
        return WorkerExitedError(self.proc.returncode, list(self._stderr_tail))

    def _fail_pending(self, death: WorkerExitedError) -> None:
        with self._lock:
            self.death = death
            pending, self._pending = self._pending, {}
        for method, fut, _ in pending.values():
            if not fut.done():
                fut.set_exception(WorkerExitedError(death.returncode, death.stderr_tail, method))
        self.exited.set()

    # ---- writing -------------------------------------------------------------------------
    def _write(self, frame: bytes) -> None:
        raise NotImplementedError

    def _new_future(self) -> AnyFuture:
        raise NotImplementedError

    def _send(self, msg: Dict[str, Any]) -> None:
        body = _encode(msg).encode()
        self._write(b"Content-Length: %d\r\n\r\n" % len(body) + body)

    def request(self, method: str, params: Dict[str, Any],
                on_output: Optional[OutputHandler] = None) -> tuple[int, AnyFuture]:
        """Sends a request; `on_output` receives the params of its `sandbox.output` notifications (on
        the reading thread), all of them before the future completes."""
        fut = self._new_future()
        rid = next(self._ids)
        with self._lock:
            if self.death is not None:
                fut.set_exception(WorkerExitedError(self.death.returncode, self.death.stderr_tail, method))
                return rid, fut
            self._pending[rid] = (method, fut, on_output)
        try:
            self._send({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
        except OSError:
            pass  # the worker is dying; reading its end fails the future
        return rid, fut

    def notify(self, method: str, params: Optional[Dict[str, Any]] = None) -> None:
        msg: Dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            msg["params"] = params
        try:
            self._send(msg)
        except OSError:
            pass

    def cancel(self, rid: int) -> None:
        """Sends `$/cancelRequest`; the call then fails with the worker's cancellation error."""
        with self._lock:
            if rid not in self._pending:
                return
        self.notify("$/cancelRequest", {"id": rid})

    def close_stdin(self) -> None:
        raise NotImplementedError


class ThreadConnection(Connection):
    """Callers read the worker's output themselves, one at a time (leader and followers)."""

    def __init__(
        self,
        binary: Optional[str] = None,
        args: Sequence[str] = ("serve",),
        env: Optional[Dict[str, str]] = None,
        stderr_lines: int = 20,
        on_stderr: Optional[Callable[[str], None]] = None,
    ) -> None:
        super().__init__(binary, args, env, stderr_lines, on_stderr)
        self._write_lock = threading.Lock()
        # Held (with `_lock`) while a thread decides who reads; `_reading` says one does.
        self._turn = threading.Condition(self._lock)
        self._reading = False
        self._following = 0  # threads waiting in `_lead` for the reader to finish
        self._ended = Answer()  # set once the worker's output ended and every pending call failed
        assert self.proc.stdout is not None
        self._fd = self.proc.stdout.fileno()

    def _new_future(self) -> AnyFuture:
        return Answer()

    def wait(self, fut: Answer, timeout: Optional[float] = None) -> Any:
        """The result of `fut`, reading the worker's output on this thread whenever no other thread
        does. Raises concurrent.futures.TimeoutError after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._lead(fut, deadline):
            raise concurrent.futures.TimeoutError()
        return fut.result()

    def wait_exit(self, timeout: float) -> bool:
        """Reads the worker's output to its end (answers nobody waits for are dropped); false if the
        worker has not exited within `timeout` seconds."""
        return self._lead(self._ended, time.monotonic() + timeout)

    def _fail_pending(self, death: WorkerExitedError) -> None:
        super()._fail_pending(death)
        self._ended.set_result(None)

    def _lead(self, answer: Answer, deadline: Optional[float]) -> bool:
        """Reads whenever no other thread does, until `answer` is set (true), the worker's output
        ends, or `deadline` passes (false). Plain attribute tests and the lock itself (not the
        Condition's Python wrappers) on the way: this runs once per call."""
        lock, ended = self._lock, self._ended
        while True:
            with lock:
                while self._reading and not answer._done and not ended._done:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        return False
                    self._following += 1
                    try:
                        self._turn.wait(left)
                    finally:
                        self._following -= 1
                if answer._done or ended._done:
                    return answer._done
                if deadline is not None and time.monotonic() >= deadline:
                    return False
                self._reading = True
            try:
                self._read_some(deadline)
            finally:
                with lock:
                    self._reading = False
                    if self._following:  # notify_all is Python code, a few µs even with nobody to wake
                        self._turn.notify_all()
            if answer._done:  # the usual end: one read brought the answer (only the reader sets it)
                return True

    def _read_some(self, deadline: Optional[float]) -> None:
        """Reads what the worker has written (waiting until `deadline` at most) and dispatches it."""
        fd = self._fd
        if deadline is not None:
            left = max(0.0, deadline - time.monotonic())
            if not select.select([fd], [], [], left)[0]:
                return
        try:
            data = os.read(fd, 1 << 16)
            if data:
                self._received(data)
                return
        except (OSError, ValueError):  # a framing error: treat like death, the worker is unusable
            pass
        self._fail_pending(self._reap())

    def _write(self, frame: bytes) -> None:
        assert self.proc.stdin is not None
        with self._write_lock:
            self.proc.stdin.write(frame)

    def close_stdin(self) -> None:
        try:
            assert self.proc.stdin is not None
            with self._write_lock:
                self.proc.stdin.close()
        except OSError:
            pass


class LoopConnection(Connection, asyncio.Protocol):
    """The event loop reads the worker's output and writes its input (never blocking: what the worker
    does not read yet waits in the transport's buffer). Calls come from the loop's thread only."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *args: Any) -> None:
        super().__init__(*args)
        self._loop = loop
        self._stdin: Optional[asyncio.WriteTransport] = None

    @classmethod
    async def open(cls, *args: Any) -> "LoopConnection":
        loop = asyncio.get_running_loop()
        conn = await asyncio.to_thread(cls, loop, *args)
        assert conn.proc.stdout is not None and conn.proc.stdin is not None
        await loop.connect_read_pipe(lambda: conn, conn.proc.stdout)
        conn._stdin, _ = await loop.connect_write_pipe(asyncio.BaseProtocol, conn.proc.stdin)
        return conn

    # asyncio.Protocol, for the output pipe
    def data_received(self, data: bytes) -> None:
        try:
            self._received(data)
        except Exception:  # a framing error: the worker is unusable; its end fails the calls
            self.proc.kill()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        async def ended() -> None:
            self._fail_pending(await asyncio.to_thread(self._reap))

        self._loop.create_task(ended())

    def _new_future(self) -> AnyFuture:
        return self._loop.create_future()

    def _write(self, frame: bytes) -> None:
        if self._stdin is None or self._stdin.is_closing():
            raise BrokenPipeError("the worker's input is closed")
        self._stdin.write(frame)

    def close_stdin(self) -> None:
        if self._stdin is not None:
            self._stdin.close()

