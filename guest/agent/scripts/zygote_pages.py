#!/usr/bin/env python3
"""How many pages of a warm worker a first run changes, measured on the host.

In a fresh fork every guest page a run writes becomes a private host page, and
the idle trim gives back those that end up as they were: what a sandbox keeps
is the pages whose contents the run changed. This starts the agent's zygote
(`zygote.py`) with this host's python3 as the agent does (`-I`, the built-in
preload list; `-S` because the guest image has no site packages), forks a
worker, warms it as the agent warms its spare, copies its memory, sends one
request (a cell by default: `print(1+1)`), and counts the pages whose
contents then differ, by mapping. Same interpreter (3.11) as the guest; the
guest figure also holds the kernel's pages (docs/run-code.md).

    python3 guest/agent/scripts/zygote_pages.py [--mode cell|program]
        [--code SRC] [--trials N] [--zygote PATH]
"""
import argparse
import array
import os
import re
import socket
import struct
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def preload():
    """The agent's built-in preload list, read from its one definition
    (`zeroboot_proto::PYTHON_PRELOAD`) rather than copied here."""
    source = (ROOT / "proto/src/lib.rs").read_text()
    found = re.search(r'pub const PYTHON_PRELOAD: &str = "([^"]*)";', source)
    if found is None:
        sys.exit("PYTHON_PRELOAD not found in proto/src/lib.rs")
    return found.group(1)


def u32(v):
    return struct.pack("<I", v)


def blob(b):
    return u32(len(b)) + b


def request(mode, keep, code):
    body = (b"R" + mode + bytes([keep, 1]) + blob(code) + u32(0) + u32(0) + blob(b"")
            + u32(0xFFFFFFFF) + u32(0xFFFFFFFF))
    return u32(len(body)) + body


def reply(sock):
    n = struct.unpack("<I", sock.recv(4, socket.MSG_WAITALL))[0]
    return sock.recv(n, socket.MSG_WAITALL)


def worker(zygote):
    """A new worker of `zygote`: (pid, control socket, stdout's read end)."""
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    ours, theirs = socket.socketpair()
    fds = array.array("i", [in_r, out_w, err_w, theirs.fileno()])
    zygote.sendmsg([b"W"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
    answer = zygote.recv(64)
    while answer[:1] == b"S":  # an earlier worker's end
        answer = zygote.recv(64)
    if answer[:1] != b"P":
        sys.exit("zygote: %r" % answer)
    for fd in (in_r, in_w, out_w, err_r, err_w):
        os.close(fd)
    theirs.close()
    return struct.unpack("<I", answer[1:5])[0], ours, out_r


def pages(pid):
    """Every readable page of process `pid`: address -> (mapping, bytes)."""
    out = {}
    with open("/proc/%d/mem" % pid, "rb", buffering=0) as mem:
        for line in open("/proc/%d/maps" % pid).read().splitlines():
            fields = line.split(None, 5)
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            name = fields[5].strip().rsplit("/", 1)[-1] if len(fields) > 5 else "[anon]"
            if name in ("[vvar]", "[vdso]", "[vsyscall]"):
                continue
            try:
                mem.seek(lo)
                data = mem.read(hi - lo)
            except OSError:
                continue
            for off in range(0, len(data), 4096):
                out[lo + off] = (name, data[off:off + 4096])
    return out


def changed(before, after):
    by = {}
    for addr, (name, page) in after.items():
        old = before.get(addr)
        if old is None or old[1] != page:
            by[name] = by.get(name, 0) + 1
    return by


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mode", choices=("cell", "program"), default="cell")
    ap.add_argument("--code", default="print(1+1)")
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--zygote", default=str(ROOT / "guest/agent/src/exec/zygote.py"))
    args = ap.parse_args()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", Path(args.zygote).read_text(), preload()],
                            stdin=theirs.fileno())
    theirs.close()
    if ours.recv(16) != b"R":
        sys.exit("the zygote did not get ready")
    counts = []
    try:
        for trial in range(args.trials):
            pid, ctl, out = worker(ours)
            ctl.sendall(request(b"W", 1, b"pass"))  # the agent's warm-up of its spare
            if reply(ctl)[:1] != b"D":
                sys.exit("warm-up failed")
            before = pages(pid)
            ctl.sendall(request(b"C" if args.mode == "cell" else b"S", 0, args.code.encode()))
            if args.mode == "cell" and reply(ctl)[:1] != b"D":
                sys.exit("the cell failed")
            if reply(ctl)[:1] != b"X":
                sys.exit("the run did not end")
            by = changed(before, pages(pid))
            counts.append(sum(by.values()))
            top = ", ".join("%s %d" % kv for kv in sorted(by.items(), key=lambda kv: -kv[1])[:5])
            print("trial %d: %d pages changed (%s)" % (trial, counts[-1], top))
            os.kill(pid, 9)
            ctl.close()
            os.close(out)
    finally:
        proc.kill()
    counts.sort()
    print("pages changed by one %s: p50 %d, min %d, max %d over %d trials"
          % (args.mode, counts[len(counts) // 2], counts[0], counts[-1], len(counts)))


if __name__ == "__main__":
    main()
