#!/usr/bin/env node
// Round trips through this client, to be read against the worker-side figures of `zeroboot bench`:
//
//   client_ping_us         zb.ping()                     (worker side: rpc_ping_us)
//   client_run_echo_us     zb.run(t, ["echo", "hello"])  (worker side: rpc_run_echo_us)
//   client_stdio_floor_us  this runtime's round trip to `cat` over pipes (the floor any client here pays)
//   raw_ping_us            the worker-side figures again, measured from here the way `zeroboot bench`
//   raw_run_echo_us        measures them (one line written, one line read, no client), in the same run
//
//   npm run bench -- [--samples N] [--warmup N] [--json]
//
// Each figure is {n, p50, p90, p99, max, mean} in microseconds (nearest-rank percentiles, as the Rust
// bench). Client and raw samples alternate in blocks of 50, so a noisy moment of the machine touches them
// alike. Each is measured after --warmup calls of every kind (default 5000) that are not: V8 compiles a
// path once it is hot, and each of those compiles held a call up for 0.5-3 ms in the first few thousand
// calls here (2 % of 3000 pings; none in 3000 after 9000).
import { spawn } from "node:child_process";

import { Zeroboot, findBinary } from "../dist/src/index.js";

const BLOCK = 50;

function summary(ns) {
  const us = ns.map((v) => Number(v) / 1000).sort((a, b) => a - b);
  const rank = (p) => {
    const i = Math.ceil((p / 100) * us.length);
    return Math.round(us[Math.min(Math.max(i, 1), us.length) - 1] * 10) / 10;
  };
  const mean = us.reduce((a, b) => a + b, 0) / us.length;
  return { n: us.length, p50: rank(50), p90: rank(90), p99: rank(99), max: Math.round(us.at(-1) * 10) / 10, mean: Math.round(mean * 10) / 10 };
}

/** A line-echoing child (`cat`, or `zeroboot serve` spoken to without a client). */
class Raw {
  constructor(argv) {
    this.child = spawn(argv[0], argv.slice(1), { stdio: ["pipe", "pipe", "inherit"] });
    this.buf = "";
    this.waiting = undefined;
    this.ids = 0;
    this.child.stdout.setEncoding("utf8");
    this.child.stdout.on("data", (s) => {
      this.buf += s;
      const nl = this.buf.indexOf("\n");
      if (nl >= 0 && this.waiting) {
        const line = this.buf.slice(0, nl);
        this.buf = this.buf.slice(nl + 1);
        const w = this.waiting;
        this.waiting = undefined;
        w(line);
      }
    });
  }

  line(method, params) {
    return JSON.stringify({ jsonrpc: "2.0", id: ++this.ids, method, params }) + "\n";
  }

  /** Writes `line` and waits for one line back: [nanoseconds, the line]. */
  roundTrip(line) {
    return new Promise((resolve) => {
      const start = process.hrtime.bigint();
      this.waiting = (reply) => resolve([process.hrtime.bigint() - start, reply]);
      this.child.stdin.write(line);
    });
  }

  async call(method, params) {
    const [ns, reply] = await this.roundTrip(this.line(method, params));
    return [ns, JSON.parse(reply).result];
  }

  close() {
    this.child.stdin.end();
  }
}

async function timed(f) {
  const start = process.hrtime.bigint();
  await f();
  return process.hrtime.bigint() - start;
}

/** `n` samples of each of `fs`, in turns of BLOCK consecutive samples. */
async function interleave(n, ...fs) {
  const out = fs.map(() => []);
  while (out[0].length < n) {
    for (let i = 0; i < fs.length; i++) {
      const k = Math.min(BLOCK, n - out[i].length);
      for (let j = 0; j < k; j++) out[i].push(await fs[i]());
    }
  }
  return out;
}

const args = process.argv.slice(2);
const samplesAt = args.indexOf("--samples");
const n = samplesAt >= 0 ? Number(args[samplesAt + 1]) : 2000;
const warmupAt = args.indexOf("--warmup");
const warmup = warmupAt >= 0 ? Number(args[warmupAt + 1]) : 5000;

/** `interleave` after `warmup` unmeasured calls of each of `fs`. */
async function warmThenInterleave(...fs) {
  await interleave(warmup, ...fs);
  return interleave(n, ...fs);
}

const cat = new Raw(["cat"]);
const raw = new Raw([findBinary(), "serve"]);
const zb = await Zeroboot.start();
const figures = {};
try {
  const t = await zb.loadTemplate({ builtin: "bare" });
  const [, rt] = await raw.call("template.load", { builtin: "bare" });
  await new Promise((r) => setTimeout(r, 200)); // let the pools fill
  const ping = raw.line("worker.ping", {});
  [figures.client_stdio_floor_us, figures.raw_ping_us, figures.client_ping_us] = await warmThenInterleave(
    async () => (await cat.roundTrip(ping))[0],
    async () => (await raw.call("worker.ping", {}))[0],
    () => timed(() => zb.ping()),
  );
  const run = { template: rt.template, argv: ["echo", "hello"] };
  [figures.raw_run_echo_us, figures.client_run_echo_us] = await warmThenInterleave(
    async () => (await raw.call("sandbox.run", run))[0],
    () => timed(() => zb.run(t, ["echo", "hello"])),
  );
} finally {
  await zb.stop();
  cat.close();
  raw.close();
}
const report = Object.fromEntries(Object.entries(figures).map(([k, v]) => [k, summary(v)]));
if (args.includes("--json")) console.log(JSON.stringify(report));
else
  for (const [k, s] of Object.entries(report))
    console.log(`  ${k.padEnd(26)} p50 ${String(s.p50).padStart(8)} us   p99 ${String(s.p99).padStart(8)} us   max ${String(s.max).padStart(9)} us   (n=${s.n})`);
