// The README's example, verbatim except for the import path (tests/readme.test.ts keeps them equal).
import { Zeroboot, ExecTimeoutError } from "../src/index.js";

await using zb = await Zeroboot.start();             // binary: opts.binary, $ZEROBOOT_BIN, next to the package, ../../target/release, PATH
const t = await zb.loadTemplate({ builtin: "bare" });

{
  await using sb = await zb.fork(t);                  // killed at the end of the block
  const r = await sb.exec(["echo", "hi"], { timeoutMs: 5000, env: { A: "1" }, cwd: "/", stdin: "" });
  console.log(r.stdout, r.exitCode, r.timedOut, r.durationUs);

  // streaming, with a callback ...
  await sb.exec(["flood", "1000"], { onOutput: (c) => process.stdout.write(`[${c.stream}] ${c.data}`) });
  // ... or an async iterator
  const s = sb.stream(["echo", "streamed"]);
  for await (const chunk of s) console.log(chunk.stream, chunk.data);
  console.log((await s.result).exitCode);

  // cancellation: aborting sends $/cancelRequest; the call rejects with RequestCancelledError
  const ac = new AbortController();
  setTimeout(() => ac.abort(), 100);
  await sb.exec(["spin"], { signal: ac.signal }).catch((e) => console.log(e.name));
}

const sb2 = await zb.fork(t);
try {
  await sb2.exec(["spin"], { timeoutMs: 200 });
} catch (e) {
  if (e instanceof ExecTimeoutError) console.log("timed out:", e.data);
}
// leaving the scope kills every sandbox this client forked and shuts the worker down
