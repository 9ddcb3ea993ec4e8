import asyncio
import signal
import threading
import time

import pytest

import zeroboot
from zeroboot import (
    AgentFailedError, AsyncZeroboot, CancelToken, ExecTimeoutError, FileTooLargeError, GuestCrashedError,
    RequestCancelledError, SandboxNotFoundError, TemplateNotFoundError, WorkerExitedError, Zeroboot,
)

pytestmark = pytest.mark.kvm


@pytest.fixture(scope="module")
def zb():
    with Zeroboot.start() as w:
        yield w


@pytest.fixture(scope="module")
def bare(zb):
    return zb.load_template(builtin="bare")


def test_happy_path(zb, bare):
    with zb.fork(bare) as sb:
        r = sb.exec(["echo", "hi"], timeout_ms=10_000)
        assert r.stdout == "hi\n" and r.exit_code == 0 and not r.timed_out and r.duration_us > 0
        assert sb.exec(["exit", "3"]).exit_code == 3
        s = sb.exec(["stderr", "oops"])
        assert "oops" in s.stderr and s.stdout == ""
        assert sb.exec(["cat"], stdin="from stdin").stdout == "from stdin"
        assert "ZB_TEST=42" in sb.exec(["env"], env={"ZB_TEST": "42"}).stdout
        assert any(x["sandbox"] == sb.id for x in zb.sandboxes())
        assert sb.stats()
    assert not any(x["sandbox"] == sb.id for x in zb.sandboxes())


def test_run_code(zb, bare):
    # The bare guest's "bash" is one of its command lines; `result` and `raise` set a result or an error.
    with zb.fork(bare) as sb:
        r = sb.run_code("result 42", "bash")
        assert isinstance(r, zeroboot.CodeResult) and r.result == "42" and r.error is None and r.exit_code == 0
        e = sb.run_code("raise ValueError boom", language="bash")
        assert e.exit_code == 1 and e.error["name"] == "ValueError" and e.error["value"] == "boom"
        chunks = []
        o = sb.run_code("echo hi", "bash", context="nb", on_output=chunks.append)
        assert o.stdout == "hi\n" and [c.data for c in chunks] == ["hi\n"]
        assert sb.contexts() == [{"name": "nb", "language": "bash"}]
        branch = sb.snapshot()
        with zb.fork(branch) as child:
            assert child.contexts() == [{"name": "nb", "language": "bash"}]
        zb.unload_template(branch)
        with pytest.raises(AgentFailedError):
            sb.run_code("1 + 1")  # the bare guest has no Python
        assert zb.run_code("result 7", "bash").result == "7"
        assert zb.run_code("result 8", "bash", template=bare).result == "8"
        # The prototype's one-liner: run with code and a language is run_code.
        assert zb.run("result 9", "bash", template=bare).result == "9"
        assert [x["sandbox"] for x in zb.sandboxes()] == [sb.id], "run_code leaves no sandbox behind"


def test_network_is_per_fork_and_its_policy_is_checked(zb, bare):
    with zb.fork(bare, network={"allow": ["*.example.com:443"], "max_connections": 8}) as sb:
        assert sb.stats()["network"]["connections"] == 0
    with zb.fork(bare) as sb:
        assert sb.stats()["network"] is None
    with pytest.raises(zeroboot.RpcError) as e:
        zb.fork(bare, network={"allow": ["300.1.1.1:80"]})
    assert e.value.code == -32602 and e.value.data["kind"] == "network_policy"
    # The one-shot run_code forks with the policy too.
    assert zb.run_code("result 1", "bash", template=bare, network=False).result == "1"
    with pytest.raises(zeroboot.RpcError) as e:
        zb.run_code("result 1", "bash", template=bare, network={"allow": ["300.1.1.1:80"]})
    assert e.value.code == -32602 and e.value.data["kind"] == "network_policy"


def test_files(zb, bare):
    with zb.fork(bare) as sb:
        assert sb.write_file("/etc/motd", "h\u00e9llo\n", mode=0o600) == 7
        assert sb.read_file("/etc/motd").decode() == "h\u00e9llo\n"
        assert sb.write_file("/empty", b"") == 0 and sb.read_file("/empty") == b""
        big = bytes((i * 31) % 251 for i in range(3 * 1024 * 1024 + 1))
        assert sb.write_file("/data/big.bin", big) == len(big)
        assert sb.read_file("/data/big.bin") == big
        with pytest.raises(FileTooLargeError):
            sb.read_file("/data/big.bin", max_bytes=1000)
        with pytest.raises(FileTooLargeError):
            sb.write_file("/huge", bytes(7 * 1024 * 1024))
        with pytest.raises(AgentFailedError):
            sb.read_file("/missing")
        # A snapshot carries the files; its forks and the original diverge afterwards.
        branch = sb.snapshot()
        with zb.fork(branch) as child:
            assert child.read_file("/etc/motd") == "h\u00e9llo\n".encode()
            child.write_file("/etc/motd", "child")
            assert sb.read_file("/etc/motd") == "h\u00e9llo\n".encode()
        with zb.fork(bare) as other, pytest.raises(AgentFailedError):
            other.read_file("/etc/motd")
        zb.unload_template(branch)


def test_branches(zb, bare):
    with zb.fork(bare) as sb:
        sb.exec(["poke", "0x42"])
        t = sb.snapshot()
        assert t.depth == 1 and 0 < t.own_bytes <= 64 * 1024
        kids = zb.fork_many(t, 3)
        for i, k in enumerate(kids):
            assert k.exec(["peek"]).stdout == "0x0000000000000042\n"
            k.exec(["poke", str(i)])
        # branch(n): n running copies; the snapshot between is released at once.
        copies = kids[1].branch(2)
        assert [c.exec(["peek"]).stdout for c in copies] == ["0x0000000000000001\n"] * 2
        assert all(x["template"] != copies[0].template for x in zb.templates())
        assert sb.exec(["peek"]).stdout == "0x0000000000000042\n"
        for k in kids + copies:
            k.kill()
        zb.unload_template(t)
        full = sb.snapshot(full_copy=True)
        assert full.depth == 0
        zb.unload_template(full)


def test_typed_errors(zb, bare):
    with pytest.raises(TemplateNotFoundError) as ei:
        zb.fork("no-such-template")
    assert ei.value.code == TemplateNotFoundError.code
    sb = zb.fork(bare)
    sb.kill()
    with pytest.raises(SandboxNotFoundError):
        zb.call("sandbox.exec", {"sandbox": sb.id, "argv": ["echo"]})


def test_streaming(zb, bare):
    with zb.fork(bare) as sb:
        chunks = []
        r = sb.exec(["flood", "20000"], on_output=chunks.append)
        assert r.exit_code == 0
        assert chunks and all(c.stream in ("stdout", "stderr") for c in chunks)
        s = sb.stream(["echo", "streamed"])
        text = "".join(c.data for c in s if c.stream == "stdout")
        assert "streamed" in text and s.result.exit_code == 0


def test_run_and_ping(zb, bare):
    zb.ping()
    r = zb.run(bare, ["echo", "once"], env={"A": "1"})
    assert r.stdout == "once\n" and r.exit_code == 0 and r.sandbox.startswith("sb-") and r.fork_us >= 0
    assert not any(x["sandbox"] == r.sandbox for x in zb.sandboxes()), "killed before the answer"
    chunks = []
    r = zb.run(bare, ["flood", "20000"], on_output=chunks.append)
    assert "".join(c.data for c in chunks) == r.stdout and len(r.stdout) == 20000
    assert {c.sandbox for c in chunks} == {r.sandbox}
    with pytest.raises(ExecTimeoutError):
        zb.run(bare, ["spin"], timeout_ms=100)
    outs = zb.run_many(bare, ["echo", "many"], 4)
    assert [o.stdout for o in outs] == ["many\n"] * 4 and len({o.sandbox for o in outs}) == 4
    crashed = zb.run_many(bare, ["crash"], 2)
    assert all(isinstance(e, GuestCrashedError) for e in crashed)
    assert not zb.sandboxes()


def test_cancel(zb, bare):
    sb = zb.fork(bare)
    tok = CancelToken()
    threading.Timer(0.3, tok.cancel).start()
    with pytest.raises(RequestCancelledError):
        sb.exec(["spin"], timeout_ms=120_000, cancel=tok)
    sb.kill()
    with zb.fork(bare) as sb2:
        assert sb2.exec(["echo", "ok"]).stdout == "ok\n"


def test_timeout(zb, bare):
    sb = zb.fork(bare)
    with pytest.raises(ExecTimeoutError):
        sb.exec(["spin"], timeout_ms=200)
    sb.kill()
    with zb.fork(bare) as sb2:
        assert sb2.exec(["echo", "alive"]).stdout == "alive\n"


def test_200_in_parallel_threads(zb, bare):
    from concurrent.futures import ThreadPoolExecutor

    def one(i):
        with zb.fork(bare) as sb:
            return sb.exec(["echo", f"n{i}"], timeout_ms=120_000).stdout

    with ThreadPoolExecutor(32) as ex:
        outs = list(ex.map(one, range(200)))
    assert outs == [f"n{i}\n" for i in range(200)]


def test_worker_death_fails_pending_calls():
    zb = Zeroboot.start()
    t = zb.load_template(builtin="bare")
    sbs = [zb.fork(t) for _ in range(3)]
    errors = []

    def run(sb):
        try:
            sb.exec(["spin"], timeout_ms=600_000)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=run, args=(sb,)) for sb in sbs]
    for th in threads:
        th.start()
    time.sleep(0.3)
    zb.kill(signal.SIGKILL)
    for th in threads:
        th.join(60)
    assert len(errors) == 3
    for e in errors:
        assert isinstance(e, WorkerExitedError), repr(e)
        assert e.returncode == -signal.SIGKILL and "signal 9" in str(e)
    assert not zb.alive
    with pytest.raises(WorkerExitedError):
        zb.info()
    zb.stop()
    with Zeroboot.start() as zb2:
        assert zb2.info()


def test_start_failure_reports_stderr():
    with pytest.raises(WorkerExitedError) as ei:
        Zeroboot.start(args=["no-such-subcommand"])
    assert ei.value.returncode != 0 and ei.value.stderr_tail


def test_asyncio_api():
    async def main():
        async with await AsyncZeroboot.start() as zb:
            t = await zb.load_template(builtin="bare")
            await zb.ping()
            r = await zb.run(t, ["echo", "run"])
            assert r.stdout == "run\n" and r.sandbox.startswith("sb-")
            chunks = []
            r = await zb.run(t, ["flood", "10000"], on_output=chunks.append)
            assert "".join(c.data for c in chunks) == r.stdout
            outs = await zb.run_many(t, ["echo", "m"], 3)
            assert [o.stdout for o in outs] == ["m\n"] * 3
            async with await zb.fork(t) as sb:
                r = await sb.exec(["echo", "hi"])
                assert r.stdout == "hi\n" and r.exit_code == 0
                s = sb.stream(["echo", "streamed"])
                text = "".join([c.data async for c in s if c.stream == "stdout"])
                assert "streamed" in text and (await s.result).exit_code == 0
                assert await sb.write_file("/f", b"\x00\xff" * 40_000) == 80_000
                assert await sb.read_file("/f") == b"\x00\xff" * 40_000
                branch = await sb.snapshot()
                async with await zb.fork(branch) as child:
                    assert await child.read_file("/f", max_bytes=80_000) == b"\x00\xff" * 40_000
                await zb.unload_template(branch)
                c = await sb.run_code("result 5", "bash", context="nb")
                assert c.result == "5" and await sb.contexts() == [{"name": "nb", "language": "bash"}]
                copies = await sb.branch(2)
                assert [await c.read_file("/f") for c in copies] == [b"\x00\xff" * 40_000] * 2
                await asyncio.gather(*(c.kill() for c in copies))
            assert (await zb.run_code("result 6", "bash")).result == "6"
            assert (await zb.run("result 10", "bash")).result == "10"
            # cancellation: cancelling the task sends $/cancelRequest
            sb = await zb.fork(t)
            task = asyncio.ensure_future(sb.exec(["spin"], timeout_ms=120_000))
            await asyncio.sleep(0.3)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await sb.kill()
            with pytest.raises(ExecTimeoutError):
                sb2 = await zb.fork(t)
                await sb2.exec(["spin"], timeout_ms=200)
            # 200 in parallel
            sbs = await asyncio.gather(*(zb.fork(t) for _ in range(200)))
            rs = await asyncio.gather(*(s.exec(["echo", f"n{i}"], timeout_ms=120_000) for i, s in enumerate(sbs)))
            assert [r.stdout for r in rs] == [f"n{i}\n" for i in range(200)]
            await asyncio.gather(*(s.kill() for s in sbs))
        assert not zb.alive

    asyncio.run(main())
