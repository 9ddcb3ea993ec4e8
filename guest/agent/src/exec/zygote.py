# The agent's Python zygote: started and warmed before the snapshot, it forks
# workers, so every module imported here is already in memory (shared
# copy-on-write) when user code starts. A worker runs Python for the agent:
# one program (an exec) or one cell, or cell after cell as a persistent
# context. The agent forks one spare worker before the snapshot and warms it
# with a throwaway cell, so the first Python run of a fresh sandbox needs no
# fork and finds every code path it takes already run once. A worker that
# has run its one program or cell does not exit: it reports its exit code
# and waits to be killed, which the agent does at its next request, so a
# sandbox that is killed after one run never pays for tearing the process
# down (nor for the zygote waking to reap it).
#
# Zygote channel: fd 0 is a SOCK_SEQPACKET socket to the agent.
#   agent -> zygote: b"W" carrying four descriptors: the worker's stdin,
#                    stdout, stderr and its control socket.
#   zygote -> agent: b"R" once warmed; per W, b"P" + u32 worker pid (or
#                    b"E" + message); whenever a worker ends, b"S" + u32 pid
#                    + i32 raw wait status.
# Worker channel: fd 3, a SOCK_STREAM socket; every message is a u32 length
# then the body (integers little-endian, "bytes" = u32 length + bytes).
#   agent -> worker: b"R", mode (b"S" program, b"C" cell, b"W" warm-up: a
#                    throwaway cell), keep (1: serve more cells after this
#                    one), reseed (1: reseed the random generators first),
#                    code bytes, u32 argc + argv[1:] bytes, u32 envc + (key
#                    bytes, value bytes), cwd bytes, u32 uid, u32 gid
#                    (0xffffffff: stay root; the template's user).
#   worker -> agent: after a cell, b"D" + i32 exit code + u8 parts (1: a
#                    result follows, 2: an error follows) + result bytes +
#                    error name, value and traceback bytes; once a run
#                    without keep has finished (threads joined, atexit run),
#                    b"X" + i32 exit code.
# The agent reseeds the kernel CRNG and sets the clock before each request.
import _ast
import _signal
import _socket
import gc
import os
import sys

PRELOAD = sys.argv[1].split(",") if len(sys.argv) > 1 and sys.argv[1] else []
for _name in PRELOAD:
    try:
        __import__(_name)
    except Exception as _e:  # a module the image lacks is not fatal
        print("zeroboot zygote: cannot preload %s: %s" % (_name, _e), file=sys.stderr)

# Imported here, not where they are used: an import statement runs the
# import system's Python code even for a module already loaded, and in a
# run that code's bookkeeping (its specialization counters, the error it
# raises and clears) lands on pages the fork must then copy (~50 of them for
# the one in `_finish`; docs/run-code.md).
import atexit  # noqa: E402  (after preload: always needed by the workers)
import linecache  # noqa: E402
import random  # noqa: E402
import traceback  # noqa: E402
import types  # noqa: E402

_ctl = _socket.socket(fileno=0)
_ZYGOTE = os.getpid()
_FD_SIZE = 4
_CMSG = _socket.CMSG_SPACE(4 * _FD_SIZE)
# Longest result and error texts a cell reports (the agent's frame is 64 KiB).
_MAX_RESULT = 16384
_MAX_VALUE = 4096
_MAX_TRACEBACK = 16384


def _u32(v):
    return v.to_bytes(4, "little")


def _blob(b):
    return _u32(len(b)) + b


def _cut(text, limit):
    if len(text) <= limit:
        return text
    return text[:limit] + "... [%d characters cut]" % (len(text) - limit)


def _utf8(text):
    return text.encode("utf-8", "surrogateescape")


class _Reader:
    def __init__(self, body):
        self.body, self.pos = body, 0

    def u8(self):
        self.pos += 1
        return self.body[self.pos - 1]

    def u32(self):
        self.pos += 4
        return int.from_bytes(self.body[self.pos - 4:self.pos], "little")

    def blob(self):
        n = self.u32()
        self.pos += n
        return self.body[self.pos - n:self.pos]


def _error(e, tb):
    """(name, value, traceback) of an uncaught exception; `tb` without the
    worker's own frames (None: only the exception, as for a SyntaxError)."""
    try:
        value = str(e)
    except BaseException:
        value = "<unprintable %s>" % type(e).__name__
    try:
        if tb is None:
            text = "".join(traceback.format_exception_only(type(e), e))
        else:
            text = "".join(traceback.format_exception(type(e), e, tb))
    except BaseException:
        text = "%s: %s\n" % (type(e).__name__, value)
    return type(e).__name__, _cut(value, _MAX_VALUE), _cut(text, _MAX_TRACEBACK)


def _exit_code(e):
    # SystemExit semantics of the interpreter itself.
    if e.code is None:
        return 0
    if isinstance(e.code, int):
        return e.code & 0xFF
    print(e.code, file=sys.stderr)
    return 1


def _run_cell(source, ns, name):
    """Runs `source` like a notebook cell in namespace `ns`: returns (exit
    code, repr of the last expression's value or None, error or None)."""
    text = source.decode("utf-8", "surrogateescape")
    # Tracebacks show the cell's lines, as they do for a file.
    linecache.cache[name] = (len(text), None, text.splitlines(True), name)
    try:
        tree = compile(text, name, "exec", _ast.PyCF_ONLY_AST)
        last = None
        if tree.body and isinstance(tree.body[-1], _ast.Expr):
            last = compile(_ast.Expression(tree.body.pop().value), name, "eval")
        body = compile(tree, name, "exec")
    except Exception as e:  # SyntaxError, null bytes, nesting too deep
        return 1, None, _error(e, None)
    try:
        exec(body, ns)
        if last is None:
            return 0, None, None
        value = eval(last, ns)
        return 0, None if value is None else _cut(repr(value), _MAX_RESULT), None
    except SystemExit as e:
        return _exit_code(e), None, None
    except BaseException as e:
        return 1, None, _error(e, e.__traceback__.tb_next)


def _run_program(source, argv):
    """Runs `source` as `python -c` would, in a fresh __main__; returns the
    exit code (a traceback goes to stderr)."""
    main = types.ModuleType("__main__")
    sys.modules["__main__"] = main
    sys.argv = ["-c"] + [a.decode("utf-8", "surrogateescape") for a in argv]
    try:
        exec(compile(source, "<string>", "exec"), main.__dict__)
    except SystemExit as e:
        return _exit_code(e)
    except BaseException:
        sys.excepthook(*sys.exc_info())
        return 1
    return 0


def _reseed():
    """Fresh state for every random generator a snapshot would otherwise share
    between forks: Python's, numpy's global one (if numpy is loaded) and
    OpenSSL's DRBG (if the ssl module is). The kernel CRNG was reseeded with
    host randomness just before, so os.urandom is fresh."""
    random.seed()
    np_random = sys.modules.get("numpy.random")
    if np_random is not None:
        np_random.seed()
    ssl = sys.modules.get("_ssl")
    if ssl is not None:
        ssl.RAND_add(os.urandom(48), 48.0)


def _finish(ctl, code):
    """Ends a run as the interpreter's exit would (non-daemon threads joined,
    atexit handlers run, output flushed), reports `code`, then waits for the
    agent to kill the process (or to close the channel)."""
    try:
        if "threading" in sys.modules:
            sys.modules["threading"]._shutdown()
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        pass
    try:
        ctl.sendall(_u32(5) + b"X" + code.to_bytes(4, "little", signed=True))
        while ctl.recv(4096):
            pass
    except BaseException:
        pass
    os._exit(code)


def _parse(body):
    """A worker request's fields: (mode, keep, reseed, code, argv, env, cwd,
    uid, gid)."""
    r = _Reader(body)
    r.u8()  # b"R"
    mode, keep, reseed = r.u8(), r.u8(), r.u8()
    source = r.blob()
    argv = [r.blob() for _ in range(r.u32())]
    env = [(r.blob(), r.blob()) for _ in range(r.u32())]
    cwd = r.blob()
    return mode, keep, reseed, source, argv, env, cwd, r.u32(), r.u32()


def _recv_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _worker(fds):
    """A forked worker: serves the agent's requests on fd 3 until told to stop."""
    _signal.signal(_signal.SIGCHLD, _signal.SIG_DFL)
    os.setsid()  # own session and process group: the agent kills the group
    for target, fd in enumerate(fds):
        os.dup2(fd, target)  # fd 0 replaces (and so closes) the zygote's channel
    for fd in fds:
        if fd > 3:
            os.close(fd)
    os.set_inheritable(3, False)
    ctl = _socket.socket(fileno=3)
    # Stream output as it comes: the host shows it live, and the agent batches
    # whatever accumulates in the pipe while a frame is in flight.
    sys.stdout.reconfigure(line_buffering=True)
    main = types.ModuleType("__main__")
    cells = 0
    while True:
        # An interrupt meant for a cell that has just ended is ignored.
        _signal.signal(_signal.SIGINT, _signal.SIG_IGN)
        head = _recv_exact(ctl, 4)
        body = head and _recv_exact(ctl, int.from_bytes(head, "little"))
        if not body:
            os._exit(0)  # the agent closed the channel
        mode, keep, reseed, source, argv, env, cwd, uid, gid = _parse(body)
        if reseed:
            _reseed()
        for key, value in env:
            os.environb[key] = value
        if uid != 0xFFFFFFFF and os.getuid() != uid:
            # The template's user: the zygote stays root, its workers do not
            # (a context keeps the user of its first cell).
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
        if cwd:
            os.chdir(cwd)
        if mode == ord("S"):
            _finish(ctl, _run_program(source, argv))
        if mode == ord("W"):
            # What a first program and a first cell would run, and their
            # output, in throwaway namespaces.
            _run_program(b"print(end='')", [])
            namespace, name = {}, "<warm-up>"
        else:
            cells += 1
            namespace, name = main.__dict__, "<cell-%d>" % cells
        sys.modules["__main__"] = main
        sys.argv = [""]
        _signal.signal(_signal.SIGINT, _signal.default_int_handler)
        code, result, error = _run_cell(source, namespace, name)
        _signal.signal(_signal.SIGINT, _signal.SIG_IGN)
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except BaseException:
            pass
        parts = (1 if result is not None else 0) | (2 if error is not None else 0)
        reply = b"D" + code.to_bytes(4, "little", signed=True) + bytes([parts])
        if result is not None:
            reply += _blob(_utf8(result))
        if error is not None:
            reply += b"".join(_blob(_utf8(part)) for part in error)
        ctl.sendall(_u32(len(reply)) + reply)
        if not keep:
            _finish(ctl, code)


def _reap(*_):
    """SIGCHLD in the zygote: report every ended worker to the agent."""
    if os.getpid() != _ZYGOTE:
        return
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        try:
            _ctl.send(b"S" + _u32(pid) + status.to_bytes(4, "little", signed=True))
        except OSError:
            os._exit(0)  # the agent is gone


# Rounds of the zygote's warm-up. CPython 3.11 specializes a function's
# bytecode in place after a few calls and keeps counters in it, so a function
# first called in a run writes to its code object, whose page the fork must
# then copy. Measured with a page-content diff of a worker on the host
# (docs/run-code.md): 20 rounds leave ~6 fewer pages changed by a first cell
# than one round.
_WARM_ROUNDS = 20
# A worker request as the agent sends it (see above), for the warm-up.
_SAMPLE = (b"RCS\x01" + _blob(b"x") + _u32(1) + _blob(b"a") + _u32(1)
           + _blob(b"K") + _blob(b"V") + _blob(b"") + _u32(0) + _u32(0))


def _warm_up():
    """Runs what every request and cell runs, enough times that the first
    real one finds the code paths (compiler, traceback formatting, linecache,
    the request's parse) warm and specialized; then moves every object alive
    to the collector's permanent generation, so no collection in a worker
    touches (and copies) the pages of the zygote's objects."""
    ns = {}
    for _ in range(_WARM_ROUNDS):
        _parse(_SAMPLE)
        for source in (b"x = 1\nx + 1", b"print(end='')", b"1/0", b"("):
            _run_cell(source, ns, "<warm-up>")
    linecache.cache.pop("<warm-up>", None)
    gc.collect()
    gc.freeze()


def _serve():
    _warm_up()
    _signal.signal(_signal.SIGCHLD, _reap)
    _ctl.send(b"R")
    while True:
        body, anc, _flags, _addr = _ctl.recvmsg(1 << 16, _CMSG)
        if not body:
            os._exit(0)  # the agent closed the channel
        fds = []
        for level, kind, data in anc:
            if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
                fds += [int.from_bytes(data[i:i + _FD_SIZE], "little")
                        for i in range(0, len(data) - len(data) % _FD_SIZE, _FD_SIZE)]
        if body != b"W" or len(fds) != 4:
            for fd in fds:
                os.close(fd)
            _ctl.send(b"E" + b"expected a worker request with four descriptors")
            continue
        try:
            pid = os.fork()
        except OSError as e:
            for fd in fds:
                os.close(fd)
            _ctl.send(b"E" + str(e).encode())
            continue
        if pid == 0:
            try:
                _worker(fds)
            finally:
                os._exit(127)
        for fd in fds:
            os.close(fd)
        _ctl.send(b"P" + _u32(pid))


_serve()
