import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
// @ts-ignore -- plain ESM script shared with `npm run gen`
import { generate, loadSchema, generatedPath, packageDir } from "../../scripts/gen-types.mjs";
import { METHOD_NAMES, NOTIFICATION_NAMES, ErrorCode } from "../src/index.js";

test("src/generated.ts matches schema/openrpc.json (run `npm run gen` after a schema change)", () => {
  const expected = generate(loadSchema());
  const actual = readFileSync(generatedPath, "utf8");
  assert.equal(actual, expected, "generated types drifted from the schema");
});

test("the client calls only methods the schema documents", () => {
  const src = readFileSync(join(packageDir, "src", "index.ts"), "utf8");
  const used = new Set([...src.matchAll(/call\("([a-z$/.]+)"/g)].map((m) => m[1]));
  for (const m of used) assert.ok((METHOD_NAMES as readonly string[]).includes(m), `client calls ${m}, not in schema`);
  assert.ok((NOTIFICATION_NAMES as readonly string[]).includes("sandbox.output"), "schema documents sandbox.output");
  assert.ok(Object.values(ErrorCode).includes(-32800), "schema documents the cancellation code -32800");
});
