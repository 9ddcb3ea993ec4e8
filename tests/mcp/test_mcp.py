"""`zeroboot mcp` driven by an independent client: the official MCP Python SDK, spawning the real
binary over stdio, with sandboxes on the built-in bare guest (real KVM)."""

import asyncio
import subprocess
import os
import shlex
import sys
import tempfile
import time
from contextlib import asynccontextmanager
from pathlib import Path

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.shared.exceptions import MCPError

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "clients" / "python"))
from zeroboot import Zeroboot  # noqa: E402  (to make a template file)

BINARY = os.environ.get("ZEROBOOT_BIN") or str(ROOT / "target" / "release" / "zeroboot")
TOOLS = {"exec", "run_code", "write_file", "read_file", "snapshot", "fork", "list", "kill"}


@asynccontextmanager
async def session(*args: str, status_file: str | None = None):
    """An initialised client session with a fresh `zeroboot mcp`; with `status_file`, the server runs
    under sh, which writes its exit status there (a process the client had to kill writes nothing)."""
    command, argv = BINARY, ["mcp", *args]
    if status_file:
        inner = " ".join(shlex.quote(a) for a in [BINARY, *argv])
        command, argv = "sh", ["-c", f"{inner}; echo $? > {shlex.quote(status_file)}"]
    async with stdio_client(StdioServerParameters(command=command, args=argv)) as (r, w):
        async with ClientSession(r, w) as s:
            await s.initialize()
            yield s


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


async def call(s: ClientSession, tool: str, **args):
    """Calls a tool that must succeed and returns its structured result."""
    r = await s.call_tool(tool, args)
    assert not r.is_error, r.content
    return r.structured_content


def error_text(r) -> str:
    assert r.is_error, r
    return " ".join(c.text for c in r.content)


async def refused(s: ClientSession, tool: str, args: dict) -> str:
    """The text of a call that must fail: a tool error, or a protocol error for arguments that do not
    fit the tool's input schema."""
    try:
        r = await s.call_tool(tool, args)
    except MCPError as e:
        return str(e)
    return error_text(r)


def test_initialize_and_list_tools_with_schemas():
    async def go():
        async with session() as s:
            tools = {t.name: t for t in (await s.list_tools()).tools}
            assert TOOLS <= set(tools), tools.keys()
            for name in TOOLS:
                assert tools[name].input_schema["type"] == "object", name
                assert tools[name].output_schema["type"] == "object", name
                assert tools[name].description, name
            exec_in = tools["exec"].input_schema
            assert exec_in["required"] == ["argv"]
            assert {"argv", "stdin", "env", "cwd", "timeout_ms", "sandbox"} <= set(exec_in["properties"])

    run(go())


def test_exec_echo_on_the_bare_template_gives_output_and_exit_code():
    async def go():
        async with session("--template", "bare") as s:
            out = await call(s, "exec", argv=["echo", "hello", "mcp"])
            assert out["stdout"] == "hello mcp\n"
            assert out["stderr"] == ""
            assert out["exit_code"] == 0
            # A failing program is a result, not a tool error; it ran in the same default sandbox.
            failed = await call(s, "exec", argv=["exit", "3"])
            assert failed["exit_code"] == 3
            assert failed["sandbox"] == out["sandbox"]
            # A bad call is a tool error and the server goes on.
            assert "not found" in error_text(await s.call_tool("exec", {"argv": ["echo"], "sandbox": "sb-999"}))
            assert (await call(s, "exec", argv=["echo", "still", "here"]))["stdout"] == "still here\n"

    run(go())


def test_run_code_gives_result_error_and_contexts_that_snapshot_branches():
    # The bare guest has no interpreter: its `bash` is one exec command line, plus `result WORDS`
    # and `raise NAME VALUE` (guest/bare/src/code.rs); Python and JavaScript are in the lane.
    async def go():
        async with session("--template", "bare") as s:
            tools = {t.name: t for t in (await s.list_tools()).tools}
            code_in = tools["run_code"].input_schema
            assert code_in["required"] == ["code"]
            assert {"code", "language", "context", "env", "cwd", "timeout_ms", "sandbox"} <= set(code_in["properties"])
            out = await call(s, "run_code", code="result 42", language="bash")
            assert out["result"] == "42" and out["exit_code"] == 0 and "error" not in out, out
            echoed = await call(s, "run_code", code="echo hi", language="bash")
            assert echoed["stdout"] == "hi\n" and echoed["sandbox"] == out["sandbox"]
            # An exception is a result with `error`, not a tool error.
            raised = await call(s, "run_code", code="raise ValueError bad", language="bash")
            assert raised["error"]["name"] == "ValueError" and raised["exit_code"] != 0, raised
            # A context lives in the sandbox, so a snapshot's forks carry it.
            await call(s, "run_code", code="result 1", language="bash", context="nb")
            branch = (await call(s, "snapshot"))["branch"]
            child = (await call(s, "fork", **{"from": branch}))["sandbox"]
            again = await call(s, "run_code", code="result 2", language="bash", context="nb", sandbox=child)
            assert again["result"] == "2" and again["sandbox"] == child
            # Bad arguments are tool errors and the session goes on.
            assert "cobol" in await refused(s, "run_code", {"code": "1", "language": "cobol"})
            bad = await s.call_tool("run_code", {"code": "result 1", "language": "bash", "context": "no spaces"})
            assert "context" in error_text(bad)
            assert (await call(s, "run_code", code="result 3", language="bash"))["result"] == "3"

    run(go())


def test_progress_is_reported_for_the_template_load_and_exec_output():
    async def go():
        messages = []

        async def progress(value, total, message):
            messages.append((value, message))

        async with session() as s:
            r = await s.call_tool("exec", {"argv": ["echo", "streamed"]}, progress_callback=progress)
            assert not r.is_error
        values = [v for v, _ in messages]
        assert values == sorted(values) and len(set(values)) == len(values), messages
        text = [m for _, m in messages]
        assert any("loading template" in m for m in text), text
        assert any("stdout: streamed" in m for m in text), text

    run(go())


def test_a_timeout_is_a_tool_error_and_the_session_goes_on():
    async def go():
        async with session() as s:
            first = (await call(s, "exec", argv=["echo", "one"]))["sandbox"]
            t = time.monotonic()
            r = await s.call_tool("exec", {"argv": ["spin"], "timeout_ms": 300})
            took = time.monotonic() - t
            text = error_text(r)
            assert "timed out" in text and first in text, text
            assert took < 10, took
            # The stopped default sandbox was removed; the next call gets a fresh, working one.
            listed = await call(s, "list")
            assert first not in [x["sandbox"] for x in listed["sandboxes"]]
            again = await call(s, "exec", argv=["echo", "two"])
            assert again["stdout"] == "two\n" and again["sandbox"] != first

    run(go())


def test_cancelling_a_call_stops_the_guest():
    async def go():
        async with session() as s:
            sandbox = (await call(s, "fork"))["sandbox"]
            t = time.monotonic()
            try:
                await s.call_tool("exec", {"argv": ["spin"], "sandbox": sandbox, "timeout_ms": 60000},
                                  read_timeout_seconds=1.0)
                raise AssertionError("the call should have been abandoned")
            except (MCPError, TimeoutError):
                pass
            # The client sent notifications/cancelled; the server stops the vCPU long before 60 s.
            for _ in range(100):
                states = {x["sandbox"]: x["state"] for x in (await call(s, "list"))["sandboxes"]}
                if states.get(sandbox) == "broken":
                    break
                await asyncio.sleep(0.05)
            assert states.get(sandbox) == "broken", states
            assert time.monotonic() - t < 10
            assert (await call(s, "exec", argv=["echo", "ok"]))["stdout"] == "ok\n"
            await call(s, "kill", sandbox=sandbox)

    run(go())


def test_snapshot_and_fork_branches_that_do_not_see_each_other():
    async def go():
        async with session() as s:
            await call(s, "write_file", path="/notes", content="one")
            branch = (await call(s, "snapshot"))["branch"]
            child = (await call(s, "fork", **{"from": branch}))["sandbox"]
            fresh = (await call(s, "fork"))["sandbox"]
            got = await call(s, "read_file", path="/notes", sandbox=child)
            assert (got["content"], got["encoding"]) == ("one", "utf8")
            await call(s, "write_file", path="/notes", content="two", sandbox=child)
            await call(s, "write_file", path="/bin.dat", content_base64="AP8=", sandbox=child)
            assert (await call(s, "read_file", path="/notes"))["content"] == "one"
            assert (await call(s, "read_file", path="/notes", sandbox=child))["content"] == "two"
            binary = await call(s, "read_file", path="/bin.dat", sandbox=child)
            assert (binary["content"], binary["encoding"], binary["bytes"]) == ("AP8=", "base64", 2)
            # A fork of the template sees none of it.
            assert error_text(await s.call_tool("read_file", {"path": "/notes", "sandbox": fresh}))
            listed = await call(s, "list")
            assert branch in [b["branch"] for b in listed["branches"]]
            assert {child, fresh, listed["default_sandbox"]} <= {x["sandbox"] for x in listed["sandboxes"]}
            await call(s, "kill", sandbox=child)
            assert error_text(await s.call_tool("exec", {"argv": ["echo"], "sandbox": child}))

    run(go())


def test_closing_the_session_shuts_the_server_down_cleanly():
    async def go(status: str):
        t = time.monotonic()
        async with session(status_file=status) as s:
            await call(s, "exec", argv=["echo", "bye"])
            await call(s, "fork")
        return time.monotonic() - t

    with tempfile.TemporaryDirectory() as d:
        status = os.path.join(d, "status")
        run(go(status))
        # Written only if the server exited by itself within the client's grace period (2 s).
        assert Path(status).read_text().strip() == "0"


def test_a_template_file_given_with_template_is_what_the_session_forks():
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "marked.zbt")
        with Zeroboot.start(BINARY) as zb:
            with zb.fork(zb.load_template(builtin="bare")) as sb:
                sb.write_file("/marker", "from the template file")
                zb.save_template(sb.snapshot(), path)

        async def go():
            async with session("--template", path) as s:
                got = await call(s, "read_file", path="/marker")
                assert got["content"] == "from the template file"
                assert (await call(s, "list"))["template_source"] == path

        run(go())


def test_a_template_spec_given_with_template_is_built_on_first_use():
    """`--template zeroboot.toml`: the spec is checked when the server starts (a wrong field stops it
    with the field's name) and built on the first call, its steps reported as progress. Building
    boots Linux, which needs hardware KVM: on kvm-pvm the engine refuses, and the call must be a
    tool error saying so (the lane builds specs under real KVM: tests/template_spec.rs)."""
    with tempfile.TemporaryDirectory() as d:
        bad = os.path.join(d, "bad.toml")
        Path(bad).write_text('[python]\npreloads = ["json"]\n')
        proc = subprocess.run([BINARY, "mcp", "--template", bad], capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=30)
        assert proc.returncode != 0 and "preloads" in proc.stderr, proc.stderr

        spec = os.path.join(d, "zeroboot.toml")
        Path(spec).write_text('[python]\npreload = ["json"]\n')

        async def go():
            messages = []

            async def progress(value, total, message):
                messages.append(message)

            async with session("--template", spec) as s:
                r = await s.call_tool("exec", {"argv": ["echo", "built"]}, progress_callback=progress)
                assert any(f"loading template {spec}" in m for m in messages), messages
                if r.is_error:
                    assert "needs hardware KVM" in error_text(r), error_text(r)
                    return
                assert r.structured_content["stdout"] == "built\n", r.structured_content
                assert any(m.startswith("building template: ") for m in messages), messages
                assert (await call(s, "list"))["template_source"] == spec

        asyncio.run(asyncio.wait_for(go(), 1800))
