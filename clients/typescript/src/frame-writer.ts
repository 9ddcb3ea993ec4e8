/**
 * The client's message writer: each JSON-RPC message as one frame (LSP header and body) in one write.
 * vscode-jsonrpc's own stream writer writes the header, waits for that write to complete, then writes
 * the body: two writes a tick apart, so the worker wakes for a header and again for its body.
 */
import type { Writable } from "node:stream";
import rpc from "vscode-jsonrpc/node.js";

export class FrameWriter extends rpc.AbstractMessageWriter implements rpc.MessageWriter {
  #errors = 0;

  /** Messages go out in the order they are written: each write goes into `out` at once. */
  constructor(private readonly out: Writable) {
    super();
    out.on("error", (e) => this.fireError(e));
    out.on("close", () => this.fireClose());
  }

  write(msg: rpc.Message): Promise<void> {
    const body = JSON.stringify(msg);
    const frame = `Content-Length: ${Buffer.byteLength(body, "utf8")}\r\n\r\n${body}`;
    return new Promise((resolve, reject) => {
      this.out.write(frame, "utf8", (err) => {
        if (!err) return resolve();
        this.fireError(err, msg, ++this.#errors);
        reject(err);
      });
    });
  }

  end(): void {
    this.out.end();
  }
}
