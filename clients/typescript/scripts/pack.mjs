// Packs the client and the worker binary as npm tarballs, the esbuild/biome way: the binary goes in
// a package of its own for this platform (`@zeroboot/<platform>-<arch>`, with `os` and `cpu` set),
// which the client's tarball names in `optionalDependencies`; npm installs only the platform
// package that fits, and findBinary() resolves it. The dependency is added only to the packed
// manifest, not to package.json: the source checkout never asks the registry for it.
//
//   node scripts/pack.mjs OUT_DIR ZEROBOOT_BINARY     (after `npm run build`)
import { execFileSync } from "node:child_process";
import { chmodSync, copyFileSync, cpSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const [outArg, binaryArg] = process.argv.slice(2);
if (!outArg || !binaryArg) {
  console.error("usage: node scripts/pack.mjs OUT_DIR ZEROBOOT_BINARY");
  process.exit(2);
}
const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const out = resolve(outArg);
const manifest = JSON.parse(readFileSync(join(root, "package.json"), "utf8"));
const platformName = `@zeroboot/${process.platform}-${process.arch}`;

function pack(dir) {
  const name = execFileSync("npm", ["pack", "--silent", "--pack-destination", out], { cwd: dir, encoding: "utf8" });
  return join(out, name.trim().split("\n").pop());
}

const stage = join(out, "npm-stage");
rmSync(stage, { recursive: true, force: true });

// The platform package: the binary and a manifest that limits it to this OS and CPU.
const platformDir = join(stage, "platform");
mkdirSync(join(platformDir, "bin"), { recursive: true });
copyFileSync(resolve(binaryArg), join(platformDir, "bin", "zeroboot"));
chmodSync(join(platformDir, "bin", "zeroboot"), 0o755);
writeFileSync(join(platformDir, "package.json"), JSON.stringify({
  name: platformName,
  version: manifest.version,
  description: `The zeroboot worker binary for ${process.platform}-${process.arch}`,
  license: manifest.license,
  os: [process.platform],
  cpu: [process.arch],
  files: ["bin/zeroboot"],
}, null, 2) + "\n");

// The client: what package.json's `files` lists, and a manifest naming the platform package.
const clientDir = join(stage, "client");
mkdirSync(clientDir, { recursive: true });
for (const f of manifest.files) cpSync(join(root, f), join(clientDir, f), { recursive: true });
const { devDependencies: _dev, scripts: _scripts, ...published } = manifest;
published.optionalDependencies = { ...manifest.optionalDependencies, [platformName]: manifest.version };
writeFileSync(join(clientDir, "package.json"), JSON.stringify(published, null, 2) + "\n");

for (const tarball of [pack(platformDir), pack(clientDir)]) console.log(tarball);
rmSync(stage, { recursive: true, force: true });
