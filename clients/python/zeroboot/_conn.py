"""The transport: a `zeroboot serve` child process spoken to with JSON-RPC 2.0 in LSP framing
(Content-Length headers) over its stdin/stdout. One reader thread parses frames and completes
futures; a second keeps the tail of the worker's stderr for error messages. Both the synchronous
and the asyncio API sit on this one connection."""

from __future__ import annotations

import collections
import concurrent.futures
import importlib.metadata
import itertools
import json
import os
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

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


class Connection:
    def __init__(
        self,
        binary: Optional[str] = None,
        args: Sequence[str] = ("serve",),
        env: Optional[Dict[str, str]] = None,
        stderr_lines: int = 20,
        on_stderr: Optional[Callable[[str], None]] = None,
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
        self._write_lock = threading.Lock()
        self._lock = threading.Lock()
        self._pending: Dict[int, tuple[str, concurrent.futures.Future]] = {}
        self._output: Dict[str, OutputHandler] = {}
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=stderr_lines)
        self._on_stderr = on_stderr
        self.death: Optional[WorkerExitedError] = None
        self.exited = threading.Event()
        self._stderr_thread = threading.Thread(target=self._read_stderr, name="zeroboot-stderr", daemon=True)
        self._stderr_thread.start()
        self._reader = threading.Thread(target=self._read_stdout, name="zeroboot-reader", daemon=True)
        self._reader.start()

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

    def _read_stdout(self) -> None:
        out = self.proc.stdout
        assert out is not None
        try:
            while True:
                length = None
                while True:
                    line = out.readline()
                    if not line:
                        return
                    line = line.strip()
                    if not line:
                        break
                    name, _, value = line.decode("ascii").partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value.strip())
                if length is None:
                    continue
                body = b""
                while len(body) < length:
                    chunk = out.read(length - len(body))
                    if not chunk:
                        return
                    body += chunk
                msg = json.loads(body)
                for m in msg if isinstance(msg, list) else [msg]:
                    self._dispatch(m)
        except Exception:  # a framing error: treat like death, the worker is unusable
            pass
        finally:
            self._finish()

    def _dispatch(self, m: Dict[str, Any]) -> None:
        if "method" in m:
            if m["method"] == "sandbox.output" and "id" not in m:
                params = m.get("params") or {}
                handler = self._output.get(params.get("sandbox", ""))
                if handler:
                    handler(params)
            return
        with self._lock:
            entry = self._pending.pop(m.get("id"), None)  # type: ignore[arg-type]
        if entry is None:
            return
        method, fut = entry
        if "error" in m:
            e = m["error"]
            fut.set_exception(error_from_code(e.get("code", 0), e.get("message", ""), e.get("data"), method))
        else:
            fut.set_result(m.get("result"))

    def _finish(self) -> None:
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._stderr_thread.join(timeout=1)
        death = WorkerExitedError(self.proc.returncode, list(self._stderr_tail))
        with self._lock:
            self.death = death
            pending, self._pending = self._pending, {}
        for method, fut in pending.values():
            if not fut.done():
                fut.set_exception(WorkerExitedError(death.returncode, death.stderr_tail, method))
        self.exited.set()

    # ---- writing -------------------------------------------------------------------------
    def _send(self, msg: Dict[str, Any]) -> None:
        body = json.dumps(msg, separators=(",", ":")).encode()
        frame = b"Content-Length: %d\r\n\r\n" % len(body) + body
        assert self.proc.stdin is not None
        with self._write_lock:
            self.proc.stdin.write(frame)
            self.proc.stdin.flush()

    def request(self, method: str, params: Dict[str, Any]) -> tuple[int, concurrent.futures.Future]:
        fut: concurrent.futures.Future = concurrent.futures.Future()
        rid = next(self._ids)
        with self._lock:
            if self.death is not None:
                fut.set_exception(WorkerExitedError(self.death.returncode, self.death.stderr_tail, method))
                return rid, fut
            self._pending[rid] = (method, fut)
        try:
            self._send({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
        except OSError:
            pass  # the worker is dying; the reader thread fails the future
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

    def set_output_handler(self, sandbox: str, handler: Optional[OutputHandler]) -> None:
        if handler is None:
            self._output.pop(sandbox, None)
        else:
            self._output[sandbox] = handler

    def close_stdin(self) -> None:
        try:
            assert self.proc.stdin is not None
            with self._write_lock:
                self.proc.stdin.close()
        except OSError:
            pass
