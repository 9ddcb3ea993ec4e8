// Forks 100 sandboxes from the bare template in parallel, runs a command in each, and prints the
// latency distribution of fork, exec and fork+exec as the client saw them.
//   npm run example            (ZEROBOOT_BIN=/path/to/zeroboot to pick the worker binary)
import { Zeroboot } from "../src/index.js";

const N = Number(process.env.N ?? 100);

function pct(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
}
function row(name: string, xs: number[]) {
  const f = (v: number) => `${v.toFixed(2)} ms`.padStart(10);
  console.log(`${name.padEnd(13)} p50 ${f(pct(xs, 50))}  p90 ${f(pct(xs, 90))}  p99 ${f(pct(xs, 99))}  max ${f(Math.max(...xs))}`);
}

await using zb = await Zeroboot.start();
const t = await zb.loadTemplate({ builtin: "bare" });
const started = performance.now();
const samples = await Promise.all(
  Array.from({ length: N }, async (_, i) => {
    const t0 = performance.now();
    await using sb = await zb.fork(t);
    const t1 = performance.now();
    const r = await sb.exec(["echo", `sandbox ${i}`]);
    const t2 = performance.now();
    if (r.stdout !== `sandbox ${i}\n` || r.exitCode !== 0) throw new Error(`sandbox ${i}: unexpected ${JSON.stringify(r)}`);
    return { fork: t1 - t0, exec: t2 - t1, total: t2 - t0, forkUs: sb.forkUs };
  }),
);
const wall = performance.now() - started;
console.log(`${N} sandboxes forked and exec'd in parallel in ${wall.toFixed(1)} ms (client-side latencies):`);
row("fork", samples.map((s) => s.fork));
row("exec", samples.map((s) => s.exec));
row("fork+exec", samples.map((s) => s.total));
row("fork (worker)", samples.map((s) => s.forkUs / 1000));
