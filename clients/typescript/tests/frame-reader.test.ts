import { test } from "node:test";
import assert from "node:assert/strict";
import { PassThrough } from "node:stream";

import { FrameReader, contentLength } from "../src/frame-reader.js";

function frame(msg: unknown, header = "Content-Length"): Buffer {
  const body = Buffer.from(JSON.stringify(msg), "utf8");
  return Buffer.concat([Buffer.from(`${header}: ${body.byteLength}\r\n\r\n`, "ascii"), body]);
}

function reader(): { input: PassThrough; got: unknown[]; errors: string[] } {
  const input = new PassThrough();
  const r = new FrameReader(input);
  const got: unknown[] = [];
  const errors: string[] = [];
  r.onError((e) => errors.push(e.message));
  r.listen((m) => got.push(m));
  return { input, got, errors };
}

const a = { jsonrpc: "2.0", id: 1, result: { text: "é".repeat(3) } };
const b = { jsonrpc: "2.0", method: "sandbox.output", params: { data: "x".repeat(70_000) } };

test("messages are handed on in the same turn their last byte arrives", () => {
  const { input, got } = reader();
  input.emit("data", frame(a));
  assert.deepEqual(got, [a]);
});

test("frames split anywhere, or several in one chunk, read the same", () => {
  const bytes = Buffer.concat([frame(a), frame(b, "content-length"), frame(a)]);
  for (const step of [1, 7, 19, 4096, bytes.byteLength]) {
    const { input, got, errors } = reader();
    for (let i = 0; i < bytes.byteLength; i += step) input.emit("data", bytes.subarray(i, i + step));
    assert.deepEqual(got, [a, b, a], `step ${step}`);
    assert.deepEqual(errors, []);
  }
});

test("a header without a valid length, an endless header or a bad body is one error, then nothing", () => {
  for (const bad of [
    Buffer.from("Content-Type: x\r\n\r\n{}"),
    Buffer.from("Content-Length: -1\r\n\r\n{}"),
    Buffer.from("Content-Length: 2x\r\n\r\n{}"),
    Buffer.alloc(5000, "a"),
    Buffer.from("Content-Length: 3\r\n\r\n{x}"),
  ]) {
    const { input, got, errors } = reader();
    input.emit("data", bad);
    input.emit("data", frame(a));
    assert.deepEqual(got, [], bad.toString("ascii", 0, 40));
    assert.equal(errors.length, 1, bad.toString("ascii", 0, 40));
  }
});

test("Content-Length is found among other headers, in any case", () => {
  assert.equal(contentLength("Content-Type: application/json\r\ncontent-LENGTH:  12 "), 12);
  assert.throws(() => contentLength("Content-Length: 1e3"), /invalid Content-Length/);
});
