import { test } from "node:test";
import assert from "node:assert/strict";
import { Writable } from "node:stream";

import { FrameWriter } from "../src/frame-writer.js";

function recorder(fail?: Error): { out: Writable; chunks: Buffer[] } {
  const chunks: Buffer[] = [];
  const out = new Writable({
    write(chunk: Buffer, _enc, done) {
      chunks.push(chunk);
      done(fail ?? null);
    },
  });
  return { out, chunks };
}

test("each message is one write of a whole frame, in order", async () => {
  const { out, chunks } = recorder();
  const w = new FrameWriter(out);
  const a = { jsonrpc: "2.0", id: 1, method: "worker.ping", params: {} };
  const b = { jsonrpc: "2.0", method: "$/cancelRequest", params: { id: 1, text: "é" } };
  await Promise.all([w.write(a), w.write(b)]);
  assert.equal(chunks.length, 2);
  for (const [chunk, msg] of [[chunks[0], a], [chunks[1], b]] as const) {
    const text = chunk.toString("utf8");
    const [head, body] = text.split("\r\n\r\n");
    assert.equal(head, `Content-Length: ${Buffer.byteLength(body, "utf8")}`);
    assert.deepEqual(JSON.parse(body), msg);
  }
});

test("a failed write rejects and is reported", async () => {
  const { out } = recorder(new Error("EPIPE"));
  out.on("error", () => {}); // the stream's own error event
  const w = new FrameWriter(out);
  const seen: unknown[] = [];
  w.onError(([e, msg, count]) => seen.push([(e as Error).message, msg !== undefined, count]));
  await assert.rejects(w.write({ jsonrpc: "2.0", id: 2, method: "worker.ping" } as never), /EPIPE/);
  assert.ok(seen.some((s) => JSON.stringify(s) === JSON.stringify(["EPIPE", true, 1])), JSON.stringify(seen));
});
