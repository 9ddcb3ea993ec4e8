"""Error classes. The per-code subclasses of RpcError are generated from the schema (_generated.py)."""

from __future__ import annotations

from typing import Any, Optional, Sequence


class ZerobootError(Exception):
    """Base of every error this package raises."""


class RpcError(ZerobootError):
    """The worker answered a call with a JSON-RPC error object."""

    code: int = 0

    def __init__(self, code: int, message: str, data: Any = None, method: str = "") -> None:
        super().__init__(f"{method}: {message} (code {code})")
        self.code = code
        self.message = message
        self.data = data
        self.method = method


class WorkerExitedError(ZerobootError):
    """The worker process exited (killed, crashed or shut down) while a call was pending, or before it."""

    def __init__(self, returncode: Optional[int], stderr_tail: Sequence[str], method: str = "") -> None:
        if returncode is None:
            status = "is gone"
        elif returncode < 0:
            status = f"was killed by signal {-returncode}"
        else:
            status = f"exited with code {returncode}"
        tail = ("\nlast lines of its stderr:\n  " + "\n  ".join(stderr_tail)) if stderr_tail else "\n(its stderr was empty)"
        pending = f" while {method} was pending" if method else ""
        super().__init__(f"zeroboot worker {status}{pending}{tail}")
        self.returncode = returncode
        self.stderr_tail = list(stderr_tail)
        self.method = method


class WorkerSpawnError(ZerobootError):
    """The worker binary could not be started."""
