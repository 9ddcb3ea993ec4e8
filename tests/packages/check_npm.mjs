// Run by tests/packages/test inside a temporary npm project that installed the two tarballs, with
// no cargo, no ZEROBOOT_BIN and no source checkout in reach: the platform package alone must give
// the client its worker.
import { realpathSync } from "node:fs";
import { join } from "node:path";
import { Zeroboot, findBinary, platformPackage } from "zeroboot";

if (process.env.ZEROBOOT_BIN) throw new Error("ZEROBOOT_BIN must not be set");
const binary = findBinary();
const expected = join(process.cwd(), "node_modules", platformPackage, "bin", "zeroboot");
if (realpathSync(binary) !== realpathSync(expected)) throw new Error(`found ${binary}, expected ${expected}`);
const zb = await Zeroboot.start();
try {
  const t = await zb.loadTemplate({ builtin: "bare" });
  const sb = await zb.fork(t);
  const r = await sb.exec(["echo", "from", "npm"]);
  if (r.stdout !== "from npm\n" || r.exitCode !== 0) throw new Error(`unexpected result ${JSON.stringify(r.raw)}`);
  await sb.kill();
} finally {
  await zb.stop();
}
console.log(`npm: ok (${binary})`);
