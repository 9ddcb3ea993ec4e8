# The agent's Python zygote: started and warmed before the snapshot, it forks
# one child per Python exec, so every module imported here is already in
# memory (shared copy-on-write) when user code starts.
#
# Control channel: fd 0 is a SOCK_SEQPACKET socket to the agent.
#   agent -> zygote: one request message carrying three descriptors
#                    (stdin, stdout, stderr of the run) and the body
#                    u32 argc, argc x bytes (argv[0] is the source),
#                    u32 envc, envc x (key bytes, value bytes), cwd bytes,
#                    u32 uid, u32 gid (0xffffffff: stay root),
#                    where "bytes" is a u32 little-endian length then the bytes.
#   zygote -> agent: b"R" once warmed; per request b"P" + u32 child pid,
#                    then b"S" + i32 raw wait status (or b"E" + message).
# The agent reseeds the kernel CRNG and sets the clock before each request.
import _socket
import os
import sys

PRELOAD = sys.argv[1].split(",") if len(sys.argv) > 1 and sys.argv[1] else []
for _name in PRELOAD:
    try:
        __import__(_name)
    except Exception as _e:  # a module the image lacks is not fatal
        print("zeroboot zygote: cannot preload %s: %s" % (_name, _e), file=sys.stderr)

import random  # noqa: E402  (after preload: always needed for the reseed)

_ctl = _socket.socket(fileno=0)
_FD_SIZE = 4
_CMSG = _socket.CMSG_SPACE(3 * _FD_SIZE)


def _parse(body):
    pos = 0

    def u32():
        nonlocal pos
        v = int.from_bytes(body[pos:pos + 4], "little")
        pos += 4
        return v

    def blob():
        nonlocal pos
        n = u32()
        v = body[pos:pos + n]
        pos += n
        return v

    argv = [blob() for _ in range(u32())]
    env = [(blob(), blob()) for _ in range(u32())]
    cwd = blob()
    uid, gid = u32(), u32()
    return argv, env, cwd, uid, gid


def _exit_code(e):
    # SystemExit semantics of the interpreter itself.
    if e.code is None:
        return 0
    if isinstance(e.code, int):
        return e.code & 0xFF
    print(e.code, file=sys.stderr)
    return 1


def _child(body, fds):
    os.setsid()  # own session and process group: the agent kills the group
    for target, fd in enumerate(fds):
        os.dup2(fd, target)  # fd 0 replaces (and so closes) the control socket
    for fd in fds:
        if fd > 2:
            os.close(fd)
    argv, env, cwd, uid, gid = _parse(body)
    for key, value in env:
        os.environb[key] = value
    if uid != 0xFFFFFFFF:
        # The template's user: the zygote stays root, its child does not.
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
    if cwd:
        os.chdir(cwd)
    # The kernel CRNG was reseeded with host randomness before this fork;
    # random also reseeds itself at fork (os.register_at_fork), done here
    # explicitly so the guarantee does not hang on that detail.
    random.seed()
    import types
    main = types.ModuleType("__main__")
    sys.modules["__main__"] = main
    sys.argv = ["-c"] + [a.decode("utf-8", "surrogateescape") for a in argv[1:]]
    # Stream output as it comes: the host shows it live, and the agent batches
    # whatever accumulates in the pipe while a frame is in flight.
    sys.stdout.reconfigure(line_buffering=True)
    code = 0
    try:
        exec(compile(argv[0], "<string>", "exec"), main.__dict__)
    except SystemExit as e:
        code = _exit_code(e)
    except BaseException:
        sys.excepthook(*sys.exc_info())
        code = 1
    try:
        if "threading" in sys.modules:
            sys.modules["threading"]._shutdown()
        import atexit
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        pass
    os._exit(code)


def _serve():
    _ctl.send(b"R")
    while True:
        body, anc, _flags, _addr = _ctl.recvmsg(1 << 20, _CMSG)
        if not body:
            os._exit(0)  # the agent closed the channel
        fds = []
        for level, kind, data in anc:
            if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
                fds += [int.from_bytes(data[i:i + _FD_SIZE], "little")
                        for i in range(0, len(data) - len(data) % _FD_SIZE, _FD_SIZE)]
        if len(fds) != 3:
            for fd in fds:
                os.close(fd)
            _ctl.send(b"E" + b"request without its three descriptors")
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
                _child(body, fds)
            finally:
                os._exit(127)
        for fd in fds:
            os.close(fd)
        _ctl.send(b"P" + pid.to_bytes(4, "little"))
        _, status = os.waitpid(pid, 0)
        _ctl.send(b"S" + status.to_bytes(4, "little", signed=True))


_serve()
