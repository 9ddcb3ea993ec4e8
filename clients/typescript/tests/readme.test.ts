import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");

test("README.md's example is examples/readme.ts (which the build compiles)", () => {
  const readme = readFileSync(join(root, "README.md"), "utf8");
  const block = readme.split("```ts\n")[1].split("```")[0];
  const example = readFileSync(join(root, "examples", "readme.ts"), "utf8");
  assert.equal(example.split("\n").slice(1).join("\n").replace('from "../src/index.js"', 'from "zeroboot"'), block);
});
