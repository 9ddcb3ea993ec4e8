/**
 * The client's message reader: frames (LSP header and body) parsed as their bytes arrive, each message
 * handed to the connection at once. vscode-jsonrpc's stream reader passes every message through a
 * semaphore that runs it on a later event-loop turn (setImmediate) and through two awaited decoders, so
 * each reply waited one turn more than the connection's own queue makes it wait.
 */
import type { Readable } from "node:stream";
import rpc from "vscode-jsonrpc/node.js";

const HEADER_END = Buffer.from("\r\n\r\n", "ascii");
/** Longest header accepted (the worker sends one line of ~20 bytes). */
const MAX_HEADER = 4096;
/** A Content-Length value: decimal digits, at most 15 (a safe integer). */
const LENGTH = /^[0-9]{1,15}$/;

/** The body length a frame's header declares; throws on a header without a valid Content-Length. */
export function contentLength(header: string): number {
  if (header.startsWith("Content-Length: ") && !header.includes("\r")) {
    const value = header.slice(16); // what the worker writes: one header line
    if (LENGTH.test(value)) return Number(value);
  }
  for (const line of header.split("\r\n")) {
    const colon = line.indexOf(":");
    if (colon < 0 || line.slice(0, colon).trim().toLowerCase() !== "content-length") continue;
    const value = line.slice(colon + 1).trim();
    if (!LENGTH.test(value)) throw new Error(`invalid Content-Length: ${JSON.stringify(value)}`);
    return Number(value);
  }
  throw new Error(`frame header without Content-Length: ${JSON.stringify(header)}`);
}

export class FrameReader extends rpc.AbstractMessageReader implements rpc.MessageReader {
  /** Bytes received and not yet parsed, as they arrived: joined once a whole header or body is there. */
  #chunks: Buffer[] = [];
  #size = 0;
  /** The body length of the frame being read, once its header is consumed; -1 before. */
  #need = -1;
  /** Set by a framing error: the stream is out of step and nothing after it is read. */
  #broken = false;

  constructor(private readonly input: Readable) {
    super();
    input.on("error", (e) => this.fireError(e));
    input.on("close", () => this.fireClose());
  }

  listen(callback: rpc.DataCallback): rpc.Disposable {
    const onData = (chunk: Buffer) => this.#onData(chunk, callback);
    this.input.on("data", onData);
    return { dispose: () => this.input.off("data", onData) };
  }

  #onData(chunk: Buffer, callback: rpc.DataCallback) {
    if (this.#broken) return;
    this.#chunks.push(chunk);
    this.#size += chunk.byteLength;
    for (;;) {
      let message: rpc.Message;
      try {
        if (this.#need < 0) {
          const buf = this.#joined();
          const end = buf.indexOf(HEADER_END);
          if (end < 0) {
            if (buf.byteLength > MAX_HEADER) throw new Error(`frame header longer than ${MAX_HEADER} bytes`);
            return;
          }
          this.#need = contentLength(buf.toString("ascii", 0, end));
          this.#consume(end + HEADER_END.byteLength);
        }
        if (this.#size < this.#need) return;
        const body = this.#joined().toString("utf8", 0, this.#need);
        this.#consume(this.#need);
        this.#need = -1;
        message = JSON.parse(body) as rpc.Message;
      } catch (e) {
        this.#broken = true;
        this.#chunks = [];
        this.#size = 0;
        this.fireError(e);
        return;
      }
      callback(message);
    }
  }

  /** The unparsed bytes as one buffer (a copy only when they arrived in several chunks). */
  #joined(): Buffer {
    if (this.#chunks.length > 1) this.#chunks = [Buffer.concat(this.#chunks, this.#size)];
    return this.#chunks[0] ?? Buffer.alloc(0);
  }

  /** Drops the first `n` unparsed bytes (they are in the one joined buffer). */
  #consume(n: number) {
    const rest = this.#chunks[0].subarray(n);
    this.#chunks = rest.byteLength > 0 ? [rest] : [];
    this.#size -= n;
  }
}
