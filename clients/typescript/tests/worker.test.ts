import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import {
  Zeroboot, Sandbox, Template, WorkerExitedError, RequestCancelledError, ExecTimeoutError, SandboxNotFoundError,
  TemplateNotFoundError, ZerobootRpcError, FileTooLargeError, AgentFailedError, GuestCrashedError, type OutputChunk,
} from "../src/index.js";
import { kvmSkip } from "./helpers.js";

const skip = kvmSkip();

describe("zeroboot worker", { skip }, () => {
  let zb: Zeroboot;
  let bare: Template;

  before(async () => {
    zb = await Zeroboot.start();
    bare = await zb.loadTemplate({ builtin: "bare" });
  });
  after(async () => {
    await zb?.stop();
  });

  it("happy path: fork, exec, exit codes, stderr, stdin, env, kill", async () => {
    await using sb = await zb.fork(bare);
    assert.match(sb.id, /.+/);
    const r = await sb.exec(["echo", "hi"], { timeoutMs: 10_000 });
    assert.equal(r.stdout, "hi\n");
    assert.equal(r.exitCode, 0);
    assert.equal(r.timedOut, false);
    assert.ok(r.durationUs > 0);
    const e = await sb.exec(["exit", "3"]);
    assert.equal(e.exitCode, 3);
    const s = await sb.exec(["stderr", "oops"]);
    assert.match(s.stderr, /oops/);
    assert.equal(s.stdout, "");
    const c = await sb.exec(["cat"], { stdin: "from stdin" });
    assert.equal(c.stdout, "from stdin");
    const env = await sb.exec(["env"], { env: { ZB_TEST: "42" } });
    assert.match(env.stdout, /ZB_TEST=42/);
    const list = await zb.sandboxes();
    assert.ok(JSON.stringify(list).includes(sb.id));
    const stats = await sb.stats();
    assert.ok(stats);
  });

  it("network is per fork and its policy is checked", async () => {
    const sb = await zb.fork(bare, { network: { allow: ["*.example.com:443"], max_connections: 8 } });
    const stats = await sb.stats();
    assert.equal(stats.network?.connections, 0);
    await sb.kill();
    const plain = await zb.fork(bare);
    assert.equal((await plain.stats()).network, null);
    await plain.kill();
    const badPolicy = (e: unknown) =>
      e instanceof ZerobootRpcError && e.code === -32602 && (e.data as { kind: string }).kind === "network_policy";
    await assert.rejects(zb.fork(bare, { network: { allow: ["300.1.1.1:80"] } }), badPolicy);
    // The one-shot runCode forks with the policy too.
    assert.equal((await zb.runCode("result 1", "bash", { template: bare, network: false })).result, "1");
    await assert.rejects(zb.runCode("result 1", "bash", { template: bare, network: { allow: ["300.1.1.1:80"] } }), badPolicy);
  });

  it("branches: snapshot then forkMany, branch(n), full copies", async () => {
    await using sb = await zb.fork(bare);
    await sb.exec(["poke", "0x42"]);
    const t = await sb.snapshot();
    assert.equal(t.depth, 1);
    assert.ok(t.ownBytes > 0 && t.ownBytes <= 64 * 1024);
    const kids = await zb.forkMany(t, 3);
    for (const [i, k] of kids.entries()) {
      assert.equal((await k.exec(["peek"])).stdout, "0x0000000000000042\n");
      await k.exec(["poke", String(i)]);
    }
    // branch(n): n running copies; the snapshot between them is released at once.
    const copies = await kids[1].branch(2);
    for (const c of copies) assert.equal((await c.exec(["peek"])).stdout, "0x0000000000000001\n");
    assert.ok(!(await zb.templates()).some((x) => x.template === copies[0].template));
    assert.equal((await sb.exec(["peek"])).stdout, "0x0000000000000042\n");
    for (const k of [...kids, ...copies]) await k.kill();
    await zb.unloadTemplate(t);
    const full = await sb.snapshot({ fullCopy: true });
    assert.equal(full.depth, 0);
    await zb.unloadTemplate(full);
  });

  it("typed errors for application error codes", async () => {
    await assert.rejects(zb.fork("no-such-template"), (e: unknown) => e instanceof TemplateNotFoundError && e.code === TemplateNotFoundError.code);
    const sb = await zb.fork(bare);
    await sb.kill();
    await assert.rejects(zb.call("sandbox.exec", { sandbox: sb.id, argv: ["echo"] }), SandboxNotFoundError);
    await assert.rejects(zb.call("sandbox.kill", { sandbox: "nope" }), ZerobootRpcError);
  });

  it("files: text, empty, multi-MiB bytes, limits, and snapshots that carry them", async () => {
    await using sb = await zb.fork(bare);
    assert.equal(await sb.writeFile("/etc/motd", "h\u00e9llo\n", { mode: 0o600 }), 7);
    assert.equal(new TextDecoder().decode(await sb.readFile("/etc/motd")), "h\u00e9llo\n");
    assert.equal(await sb.writeFile("/empty", new Uint8Array()), 0);
    assert.equal((await sb.readFile("/empty")).length, 0);
    const big = new Uint8Array(3 * 1024 * 1024 + 17).map((_, i) => (i * 31) % 251);
    assert.equal(await sb.writeFile("/data/big.bin", big.subarray(17)), 3 * 1024 * 1024);
    assert.deepEqual(await sb.readFile("/data/big.bin"), big.subarray(17));
    await assert.rejects(sb.readFile("/data/big.bin", { maxBytes: 1000 }), FileTooLargeError);
    await assert.rejects(sb.writeFile("/huge", new Uint8Array(7 * 1024 * 1024)), FileTooLargeError);
    await assert.rejects(sb.readFile("/missing"), AgentFailedError);
    // A snapshot carries the files; its forks and the original diverge afterwards.
    const branch = await sb.snapshot();
    await using child = await zb.fork(branch);
    assert.equal(new TextDecoder().decode(await child.readFile("/etc/motd")), "h\u00e9llo\n");
    await child.writeFile("/etc/motd", "child");
    assert.equal(new TextDecoder().decode(await sb.readFile("/etc/motd")), "h\u00e9llo\n");
    await using other = await zb.fork(bare);
    await assert.rejects(other.readFile("/etc/motd"), AgentFailedError);
    await child.kill();
    await zb.unloadTemplate(branch);
  });

  it("runCode: results, errors, contexts through a snapshot, and the one-shot run", async () => {
    // The bare guest's "bash" is one of its command lines; `result` and `raise` set a result or an error.
    await using sb = await zb.fork(bare);
    const r = await sb.runCode("result 42", { language: "bash" });
    assert.equal(r.result, "42");
    assert.equal(r.exitCode, 0);
    assert.equal(r.error, undefined);
    const e = await sb.runCode("raise ValueError boom", { language: "bash" });
    assert.equal(e.exitCode, 1);
    assert.deepEqual([e.error?.name, e.error?.value], ["ValueError", "boom"]);
    const chunks: OutputChunk[] = [];
    const o = await sb.runCode("echo hi", { language: "bash", context: "nb", onOutput: (c) => chunks.push(c) });
    assert.equal(o.stdout, "hi\n");
    assert.deepEqual(chunks, [{ stream: "stdout", data: "hi\n", sandbox: sb.id }]);
    assert.deepEqual(await sb.contexts(), [{ name: "nb", language: "bash" }]);
    const branch = await sb.snapshot();
    await using child = await zb.fork(branch);
    assert.deepEqual(await child.contexts(), [{ name: "nb", language: "bash" }]);
    await assert.rejects(sb.runCode("1 + 1"), AgentFailedError); // no Python in the bare guest
    const once = await zb.runCode("result 7", "bash");
    assert.equal(once.result, "7");
    const other = await zb.runCode("result 8", "bash", { template: bare });
    assert.equal(other.result, "8");
    // The prototype's one-liner: run with code and a language is runCode.
    const liner = await zb.run("result 9", "bash", { template: bare });
    assert.equal(liner.result, "9");
    const alive = (await zb.sandboxes()).sandboxes.map((s) => s.sandbox).sort();
    assert.deepEqual(alive, [sb.id, child.id].sort(), "run leaves no sandbox behind");
    await child.kill();
    await zb.unloadTemplate(branch);
  });

  it("streaming: callbacks and async iterator", async () => {
    await using sb = await zb.fork(bare);
    const chunks: OutputChunk[] = [];
    const r = await sb.exec(["flood", "20000"], { onOutput: (c) => chunks.push(c) });
    assert.equal(r.exitCode, 0);
    assert.ok(chunks.length >= 1, "at least one sandbox.output notification");
    assert.ok(chunks.every((c) => c.stream === "stdout" || c.stream === "stderr"));
    const streamed = chunks.filter((c) => c.stream === "stdout").map((c) => c.data).join("");
    assert.ok(streamed.length > 0);

    const s = sb.stream(["echo", "streamed"]);
    let text = "";
    for await (const c of s) if (c.stream === "stdout") text += c.data;
    assert.match(text, /streamed/);
    assert.equal((await s.result).exitCode, 0);
  });

  it("run, runMany and ping: fork, exec and kill in one round trip", async () => {
    await zb.ping();
    const r = await zb.run(bare, ["echo", "once"], { env: { A: "1" } });
    assert.equal(r.stdout, "once\n");
    assert.equal(r.exitCode, 0);
    assert.match(r.sandbox, /^sb-/);
    assert.ok(r.forkUs >= 0);
    assert.ok(!JSON.stringify(await zb.sandboxes()).includes(`"${r.sandbox}"`), "killed before the answer");
    const chunks: OutputChunk[] = [];
    const f = await zb.run(bare, ["flood", "20000"], { onOutput: (c) => chunks.push(c) });
    assert.equal(chunks.map((c) => c.data).join(""), f.stdout);
    assert.equal(f.stdout.length, 20000);
    assert.deepEqual([...new Set(chunks.map((c) => c.sandbox))], [f.sandbox]);
    await assert.rejects(zb.run(bare, ["spin"], { timeoutMs: 100 }), ExecTimeoutError);
    const many = await zb.runMany(bare, ["echo", "many"], 4, { onOutput: (c) => chunks.push(c) });
    assert.deepEqual(many.map((m) => (m as { stdout: string }).stdout), Array(4).fill("many\n"));
    const crashed = await zb.runMany(bare, ["crash"], 2);
    assert.ok(crashed.every((e) => e instanceof GuestCrashedError));
    assert.equal((await zb.sandboxes()).sandboxes.length, 0);
  });

  it("cancel: AbortSignal sends $/cancelRequest and the call rejects", async () => {
    const sb = await zb.fork(bare);
    const ac = new AbortController();
    const p = sb.exec(["spin"], { signal: ac.signal, timeoutMs: 120_000 });
    setTimeout(() => ac.abort(), 300);
    await assert.rejects(p, RequestCancelledError);
    await sb.kill();
    // an already-aborted signal never reaches the worker
    await assert.rejects(zb.info({ signal: AbortSignal.abort() }), RequestCancelledError);
    // the worker is still healthy
    await using sb2 = await zb.fork(bare);
    assert.equal((await sb2.exec(["echo", "ok"])).stdout, "ok\n");
  });

  it("timeout: a spinning guest is stopped and the worker stays healthy", async () => {
    const sb = await zb.fork(bare);
    await assert.rejects(sb.exec(["spin"], { timeoutMs: 200 }), (e: unknown) => {
      assert.ok(e instanceof ExecTimeoutError, `expected ExecTimeoutError, got ${e}`);
      return true;
    });
    await sb.kill();
    await using sb2 = await zb.fork(bare);
    assert.equal((await sb2.exec(["echo", "alive"])).stdout, "alive\n");
  });

  it("200 sandboxes in parallel", async () => {
    const sbs = await Promise.all(Array.from({ length: 200 }, () => zb.fork(bare)));
    assert.equal(new Set(sbs.map((s) => s.id)).size, 200);
    const rs = await Promise.all(sbs.map((s, i) => s.exec(["echo", `n${i}`], { timeoutMs: 120_000 })));
    rs.forEach((r, i) => assert.equal(r.stdout, `n${i}\n`));
    await Promise.all(sbs.map((s: Sandbox) => s.kill()));
  });
});

describe("worker lifecycle", { skip }, () => {
  it("worker death rejects every pending call at once, naming the exit status and stderr", async () => {
    const zb = await Zeroboot.start();
    const t = await zb.loadTemplate({ builtin: "bare" });
    const sbs = await Promise.all([zb.fork(t), zb.fork(t), zb.fork(t)]);
    const pending: Promise<unknown>[] = sbs.map((s) => s.exec(["spin"], { timeoutMs: 600_000 }));
    await new Promise((r) => setTimeout(r, 300));
    zb.kill("SIGKILL");
    const results = await Promise.allSettled(pending);
    for (const r of results) {
      assert.equal(r.status, "rejected");
      const e = (r as PromiseRejectedResult).reason;
      assert.ok(e instanceof WorkerExitedError, `expected WorkerExitedError, got ${e}`);
      assert.equal(e.signal, "SIGKILL");
      assert.match(e.message, /SIGKILL/);
    }
    assert.equal(zb.alive, false);
    await assert.rejects(zb.info(), WorkerExitedError);
    await zb.stop(); // no-op after death
    // a new worker can be started
    await using zb2 = await Zeroboot.start();
    assert.ok(await zb2.info());
  });

  it("worker that fails at start reports its exit code and stderr", async () => {
    await assert.rejects(Zeroboot.start({ args: ["no-such-subcommand"] }), (e: unknown) => {
      assert.ok(e instanceof WorkerExitedError, `got ${e}`);
      assert.notEqual(e.exitCode, 0);
      assert.ok(e.stderrTail.length > 0, "stderr tail captured");
      return true;
    });
  });

  it("await using stops the worker and kills its sandboxes", async () => {
    let zbRef: Zeroboot;
    {
      await using zb = await Zeroboot.start();
      zbRef = zb;
      const t = await zb.loadTemplate({ builtin: "bare" });
      await zb.fork(t);
    }
    const st = await zbRef.exited;
    assert.equal(zbRef.alive, false);
    assert.equal(st.exitCode, 0);
  });
});
