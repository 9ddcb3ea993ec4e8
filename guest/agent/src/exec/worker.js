// The agent's JavaScript worker: a Node.js process that runs cells for the
// agent. Node cannot fork, so the agent starts one before the snapshot (the
// first JavaScript run of a fresh sandbox finds it warm) and later ones cold.
//
// Channel: fd 3, a SOCK_STREAM socket; messages as for the Python workers
// (see zygote.py): a u32 length, then the body.
//   agent -> worker: b"R", mode (b"C"), keep, reseed, code bytes, u32 argc
//                    (0), u32 envc + (key bytes, value bytes), cwd bytes,
//                    u32 uid, u32 gid (0xffffffff: stay root).
//   worker -> agent: b"H" once warm; after each cell b"D" + i32 exit code +
//                    u8 parts (1: result, 2: error) + result bytes + error
//                    name, value and stack bytes; once a run without keep has
//                    finished, b"X" + i32 exit code.
// A cell runs in the worker's own (main) context like a script: its
// completion value is the result. Without keep, the worker then lets the event
// loop run out, as `node -e` would; when it has, the worker reports the exit
// code it would exit with and waits for the agent to kill it (at its next
// request: a sandbox killed after one run never tears the process down).
"use strict";
const net = require("net");
const vm = require("vm");
const util = require("util");
const crypto = require("crypto");

const MAX_RESULT = 16384;
const MAX_VALUE = 4096;
const MAX_STACK = 16384;

// Cells see `require` (resolved from the working directory) as a global.
globalThis.require = require("module").createRequire(process.cwd() + "/");

// V8 keeps Math.random's state per context, seeded once per process: a
// process started before the snapshot would give every fork the same
// sequence, and V8 has no call to reseed it. Math.random draws from a pool
// filled by OpenSSL instead, emptied whenever the agent says reseed.
const pool = new Float64Array(512);
const words = new Uint32Array(pool.length * 2);
let next = pool.length;
function refill() {
  crypto.randomFillSync(words);
  for (let i = 0; i < pool.length; i++) {
    // 53 random bits: 21 from the high word, 32 from the low one.
    pool[i] = ((words[2 * i] >>> 11) * 4294967296 + words[2 * i + 1]) / 9007199254740992;
  }
  next = 0;
}
Object.defineProperty(Math, "random", {
  value: function random() {
    if (next === pool.length) refill();
    return pool[next++];
  },
  writable: true,
  configurable: true,
});

// OpenSSL's DRBG (crypto.randomBytes, key generation) is reseeded through a
// tiny native module when the image has it (ZEROBOOT_RESEED_ADDON).
let reseedOpenssl = () => {};
if (process.env.ZEROBOOT_RESEED_ADDON) {
  try {
    const addon = { exports: {} };
    process.dlopen(addon, process.env.ZEROBOOT_RESEED_ADDON);
    reseedOpenssl = addon.exports.reseed;
  } catch (e) {
    process.stderr.write(`zeroboot worker: cannot load the reseed addon: ${e.message}\n`);
  }
  delete process.env.ZEROBOOT_RESEED_ADDON;
}

function reseed() {
  try {
    reseedOpenssl();
  } catch (e) {
    process.stderr.write(`zeroboot worker: cannot reseed OpenSSL: ${e.message}\n`);
  }
  next = pool.length;
}

function cut(text, limit) {
  return text.length <= limit ? text : `${text.slice(0, limit)}... [${text.length - limit} characters cut]`;
}

function describe(e) {
  if (e instanceof Error || (e && typeof e === "object" && "stack" in e)) {
    return [String(e.name ?? "Error"), cut(String(e.message ?? ""), MAX_VALUE), cut(String(e.stack ?? e), MAX_STACK)];
  }
  const text = cut(util.inspect(e), MAX_VALUE);
  return ["Uncaught", text, `Uncaught ${text}`];
}

let cells = 0;
function runCell(source, keep) {
  cells += 1;
  try {
    const script = new vm.Script(source, { filename: `<cell-${cells}>` });
    // In a context an interrupt (SIGINT from the agent at the deadline) stops
    // the cell, not the process.
    const value = script.runInThisContext({ breakOnSigint: keep });
    return [0, value === undefined ? null : cut(util.inspect(value), MAX_RESULT), null];
  } catch (e) {
    return [1, null, describe(e)];
  }
}

function blob(text) {
  const b = Buffer.from(text, "utf8");
  const len = Buffer.alloc(4);
  len.writeUInt32LE(b.length);
  return [len, b];
}

function doneMessage(code, result, error) {
  const head = Buffer.alloc(6);
  head.write("D", 0);
  head.writeInt32LE(code, 1);
  head.writeUInt8((result !== null ? 1 : 0) | (error !== null ? 2 : 0), 5);
  const parts = [head];
  if (result !== null) parts.push(...blob(result));
  if (error !== null) for (const p of error) parts.push(...blob(p));
  const body = Buffer.concat(parts);
  const len = Buffer.alloc(4);
  len.writeUInt32LE(body.length);
  return Buffer.concat([len, body]);
}

function parse(body) {
  let pos = 0;
  const u8 = () => body[pos++];
  const u32 = () => {
    pos += 4;
    return body.readUInt32LE(pos - 4);
  };
  const bytes = () => {
    const n = u32();
    pos += n;
    return body.subarray(pos - n, pos);
  };
  u8(); // "R"
  const req = { mode: u8(), keep: u8() === 1, reseed: u8() === 1, code: bytes().toString("utf8"), env: [] };
  for (let i = u32(); i > 0; i--) bytes(); // argv: none for cells
  for (let i = u32(); i > 0; i--) req.env.push([bytes().toString("utf8"), bytes().toString("utf8")]);
  req.cwd = bytes().toString("utf8");
  req.uid = u32();
  req.gid = u32();
  return req;
}

// Outside a cell an interrupt is ignored (a late one must not end a context).
process.on("SIGINT", () => {});
// An exception thrown later by a context's callbacks is printed, and the
// context lives on; without keep, Node's default (print, exit 1) applies.
let keepAlive = true;
process.on("uncaughtException", (e) => {
  if (!keepAlive) {
    process.stderr.write(`${describe(e)[2]}\n`);
    process.exit(1);
  }
  process.stderr.write(`Uncaught ${describe(e)[2]}\n`);
});

const ctl = new net.Socket({ fd: 3, readable: true, writable: true });
let pending = Buffer.alloc(0);
ctl.on("data", (chunk) => {
  pending = Buffer.concat([pending, chunk]);
  while (pending.length >= 4 && pending.length >= 4 + pending.readUInt32LE(0)) {
    const n = pending.readUInt32LE(0);
    const req = parse(pending.subarray(4, 4 + n));
    pending = pending.subarray(4 + n);
    if (req.reseed) reseed();
    for (const [k, v] of req.env) process.env[k] = v;
    if (req.uid !== 0xffffffff && process.getuid() !== req.uid) {
      // The template's user: the agent stays root, its workers do not.
      process.setgroups([]);
      process.setgid(req.gid);
      process.setuid(req.uid);
    }
    if (req.cwd) process.chdir(req.cwd);
    keepAlive = req.keep;
    const [code, result, error] = runCell(req.code, req.keep);
    ctl.write(doneMessage(code, result, error));
    if (!req.keep) {
      // Let the event loop run out (see "beforeExit").
      process.exitCode = code;
      ctl.unref();
      return;
    }
  }
});
ctl.on("end", () => process.exit(0)); // the agent closed the channel
let finished = false;
process.on("beforeExit", (code) => {
  if (keepAlive || finished) return;
  finished = true;
  const msg = Buffer.alloc(9);
  msg.writeUInt32LE(5, 0);
  msg.write("X", 4);
  msg.writeInt32LE(code, 5);
  ctl.write(msg);
  ctl.ref(); // linger until killed
});

// Warm the paths every cell takes, then say so.
runCell("(() => { const warm = [1]; return warm.length + 1; })()", true);
runCell("null.x", true);
runCell("(", true);
cells = 0;
ctl.write(Buffer.from([1, 0, 0, 0, 0x48]));
