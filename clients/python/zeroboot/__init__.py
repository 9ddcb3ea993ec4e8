"""Python client for the zeroboot worker (standard library only).

Spawns `zeroboot serve` and speaks JSON-RPC 2.0 to it over stdio with LSP framing. `Zeroboot` is the
synchronous API, `AsyncZeroboot` the asyncio one; wire types and one exception class per error
code are generated from schema/openrpc.json into `zeroboot._generated`."""

from ._client import (
    AsyncExecStream, AsyncSandbox, AsyncZeroboot, CancelToken, CodeResult, ExecResult, ExecStream, OutputChunk,
    RunResult,
    Sandbox, Template, Zeroboot,
)
from ._conn import find_binary
from ._errors import RpcError, WorkerExitedError, WorkerSpawnError, ZerobootError
from ._generated import *  # noqa: F401,F403 - the per-code exception classes and wire types
from ._generated import ERROR_CLASSES, METHOD_NAMES, NOTIFICATION_NAMES, error_from_code

__all__ = [
    "AsyncExecStream", "AsyncSandbox", "AsyncZeroboot", "CancelToken", "CodeResult", "ExecResult", "ExecStream",
    "OutputChunk", "RunResult",
    "Sandbox", "Template", "Zeroboot", "find_binary", "RpcError", "WorkerExitedError", "WorkerSpawnError",
    "ZerobootError", "ERROR_CLASSES", "METHOD_NAMES", "NOTIFICATION_NAMES", "error_from_code",
    *(cls.__name__ for cls in ERROR_CLASSES.values()),
]
