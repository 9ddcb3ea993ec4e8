/**
 * TypeScript client for the zeroboot worker: spawns `zeroboot serve` and speaks JSON-RPC 2.0 to it over
 * stdio with LSP (Content-Length) framing through vscode-jsonrpc.
 *
 * Wire types (params, results, notifications, error codes) live in generated.ts, generated from
 * schema/openrpc.json by scripts/gen-types.mjs; a test fails if they drift from the schema.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { PassThrough } from "node:stream";
import { dirname, join, resolve, delimiter } from "node:path";
import { fileURLToPath } from "node:url";
import rpc from "vscode-jsonrpc/node.js";
import type { MessageConnection } from "vscode-jsonrpc/node.js";

import { WorkerExitedError, WorkerSpawnError, ZerobootError, ZerobootRpcError } from "./errors.js";
import { FrameReader } from "./frame-reader.js";
import { FrameWriter } from "./frame-writer.js";
import { errorFromCode, type CodeError, type Language, type Methods, type NetworkPolicy, type Notifications } from "./generated.js";

export * from "./errors.js";
export * from "./generated.js";

// Node 20 has no Symbol.asyncDispose; TypeScript's `await using` looks it up at run time.
(Symbol as { asyncDispose?: symbol }).asyncDispose ??= Symbol("Symbol.asyncDispose");
(Symbol as { dispose?: symbol }).dispose ??= Symbol("Symbol.dispose");

export type MethodName = keyof Methods;
export type ParamsOf<M extends MethodName> = Methods[M]["params"];
export type ResultOf<M extends MethodName> = Methods[M]["result"];
export type OutputNotification = Notifications["sandbox.output"];

/** Options of {@link Zeroboot.start}. */
export interface StartOptions {
  /** Path of the zeroboot binary. Default: $ZEROBOOT_BIN, then the binary of the platform package
   * ({@link platformPackage}, installed with this one), then `zeroboot` next to this package, then
   * `../../target/release/zeroboot` relative to the package (a source checkout), then `zeroboot` on PATH. */
  binary?: string;
  /** Arguments after the binary. Default: `["serve"]`. */
  args?: string[];
  /** Environment of the worker. Default: this process's. */
  env?: NodeJS.ProcessEnv;
  /** How many of the worker's last stderr lines to keep for error messages. Default 20. */
  stderrLines?: number;
  /** Called with every line the worker writes to stderr (its logs). */
  onStderr?: (line: string) => void;
}

/** Per-call options. */
export interface CallOptions {
  /** Aborting sends `$/cancelRequest`; the call then rejects with the worker's cancellation error. */
  signal?: AbortSignal;
  /** Receives the call's `sandbox.output` notifications, all before the call settles. */
  onNotification?: (params: OutputNotification) => void;
}

/** One chunk of streamed output. */
export interface OutputChunk {
  stream: OutputNotification["stream"];
  data: OutputNotification["data"];
  /** The sandbox that printed it (runs of {@link Zeroboot.runMany} each have their own). */
  sandbox: string;
}

/** Options of {@link Sandbox.exec}. */
export interface ExecOptions extends CallOptions {
  stdin?: string;
  env?: Record<string, string>;
  cwd?: string;
  timeoutMs?: number;
  outputCap?: number;
  /** Receives output chunks as the worker streams them (turns on `stream`). */
  onOutput?: (chunk: OutputChunk) => void;
}

/** Options of {@link Sandbox.runCode}. */
export interface RunCodeOptions extends CallOptions {
  /** What the code is written in (default "python"). */
  language?: Language;
  /** Run in this persistent context of the sandbox (created on first use). */
  context?: string;
  env?: Record<string, string>;
  cwd?: string;
  timeoutMs?: number;
  outputCap?: number;
  /** Receives output chunks as the worker streams them (turns on `stream`). */
  onOutput?: (chunk: OutputChunk) => void;
}

/** Options of {@link Zeroboot.runCode}: a fresh sandbox per call, so no context and no streaming. */
export interface RunCodeOnceOptions extends Omit<RunCodeOptions, "language" | "context" | "onOutput"> {
  /** The template to fork (default: the last one this client loaded). */
  template?: Template | string;
  /** The fork's network, as for {@link Zeroboot.fork}. */
  network?: NetworkPolicy | false;
}

/** Options of {@link Zeroboot.fork} and {@link Zeroboot.forkMany}. */
export interface ForkOptions extends CallOptions {
  /** The sandbox's network: a policy (`{allow, deny, max_connections, max_bytes_per_sec}`), `false` for none, or absent for the template's (none unless its spec has one). */
  network?: NetworkPolicy | false;
}

/** Options of {@link Sandbox.writeFile}. */
export interface WriteFileOptions extends CallOptions {
  /** Permission bits (default 0o644). */
  mode?: number;
}

/** Options of {@link Sandbox.readFile}. */
export interface ReadFileOptions extends CallOptions {
  /** Largest file accepted (default and maximum: the worker's `limits.max_read_bytes`); larger is `FileTooLargeError`. */
  maxBytes?: number;
}

type RawExecResult = ResultOf<"sandbox.exec">;
type RawRunResult = RawExecResult & { sandbox: string; fork_us: number };

/** Result of {@link Sandbox.exec}, with camelCase names. `raw` is the worker's result as sent. */
export interface ExecResult {
  stdout: RawExecResult["stdout"];
  stderr: RawExecResult["stderr"];
  exitCode: RawExecResult["exit_code"];
  signal: RawExecResult["signal"];
  timedOut: boolean;
  truncated: boolean;
  durationUs: number;
  raw: RawExecResult;
}

/** Result of {@link Sandbox.runCode}: an exec's result plus the code's `result` (the text of its last expression's
 * value) and `error` (its uncaught exception). */
export interface CodeResult extends ExecResult {
  result: string | undefined;
  error: CodeError | undefined;
  raw: ResultOf<"sandbox.run_code">;
}

/** Result of {@link Zeroboot.run}: the exec's result, the sandbox it ran in (already killed) and its fork time. */
export interface RunResult extends ExecResult {
  sandbox: string;
  forkUs: number;
}

/** The params `sandbox.exec` and `sandbox.run` share. */
function execParams(argv: string[], opts: ExecOptions) {
  const params: { argv: string[]; stdin?: string; env?: Record<string, string>; cwd?: string; timeout_ms?: number; output_cap?: number; stream?: boolean } = { argv };
  if (opts.stdin !== undefined) params.stdin = opts.stdin;
  if (opts.env !== undefined) params.env = opts.env;
  if (opts.cwd !== undefined) params.cwd = opts.cwd;
  if (opts.timeoutMs !== undefined) params.timeout_ms = opts.timeoutMs;
  if (opts.outputCap !== undefined) params.output_cap = opts.outputCap;
  if (opts.onOutput) params.stream = true;
  return params;
}

/** The call options of an exec or run: its abort signal, and its output routed to `onOutput`. */
function callOptions(opts: Pick<ExecOptions, "signal" | "onOutput">): CallOptions {
  const { onOutput } = opts;
  return {
    signal: opts.signal,
    onNotification: onOutput && ((p) => onOutput({ stream: p.stream, data: p.data, sandbox: p.sandbox })),
  };
}

function execResult(r: RawExecResult): ExecResult {
  return {
    stdout: r.stdout,
    stderr: r.stderr,
    exitCode: r.exit_code,
    signal: r.signal,
    timedOut: r.timed_out,
    truncated: r.truncated,
    durationUs: r.duration_us,
    raw: r,
  };
}

function runResult(r: RawRunResult): RunResult {
  const e = execResult(r) as RunResult; // a fresh object: adding two fields is cheaper than spreading it
  e.sandbox = r.sandbox;
  e.forkUs = r.fork_us;
  return e;
}

/** A streaming exec: iterate the output chunks; `result` settles when the exec ends. */
export interface ExecStream extends AsyncIterable<OutputChunk> {
  readonly result: Promise<ExecResult>;
}

/** A loaded template. */
export interface Template {
  readonly id: string;
  readonly memoryBytes: number;
  /** Branches between it and the template its memory is mapped from (0: built, loaded or full copy). */
  readonly depth: number;
  /** Memory it holds itself: for a branch, the pages its sandbox changed. */
  readonly ownBytes: number;
}

function toTemplate(r: ResultOf<"template.load">): Template {
  return { id: r.template, memoryBytes: r.memory_bytes, depth: r.depth, ownBytes: r.memory.own_bytes };
}

/** Options of {@link Sandbox.snapshot}. */
export interface SnapshotOptions extends CallOptions {
  /** Copy the whole memory into a template of its own instead of a layer. */
  fullCopy?: boolean;
}

/** Options of {@link Zeroboot.unloadTemplate}. */
export interface UnloadOptions extends CallOptions {
  /** Leave its live sandboxes running (they keep the memory they were forked from). */
  keepSandboxes?: boolean;
}

const packageDir = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");

/** Name of the package that carries the worker binary for this platform (the esbuild/biome pattern:
 * one package per platform, each with `os` and `cpu` set, named in the main package's
 * `optionalDependencies`, so npm installs only the one that fits). */
export const platformPackage = `@zeroboot/${process.platform}-${process.arch}`;

/** The binary of the installed platform package, or undefined when there is none. */
function platformBinary(): string | undefined {
  try {
    const manifest = createRequire(import.meta.url).resolve(`${platformPackage}/package.json`);
    const binary = join(dirname(manifest), "bin", "zeroboot");
    return existsSync(binary) ? binary : undefined;
  } catch {
    return undefined;
  }
}

/** Resolves the worker binary as documented in {@link StartOptions.binary}. */
export function findBinary(explicit?: string): string {
  if (explicit) return explicit;
  const env = process.env.ZEROBOOT_BIN;
  if (env) return env;
  const shipped = platformBinary();
  if (shipped) return shipped;
  for (const candidate of [join(packageDir, "zeroboot"), join(packageDir, "..", "..", "target", "release", "zeroboot")]) {
    if (existsSync(candidate)) return candidate;
  }
  for (const dir of (process.env.PATH ?? "").split(delimiter)) {
    if (dir && existsSync(join(dir, "zeroboot"))) return join(dir, "zeroboot");
  }
  return "zeroboot";
}

/** A running `zeroboot serve` worker. */
export class Zeroboot implements AsyncDisposable {
  readonly binary: string;
  readonly pid: number | undefined;
  readonly #child: ChildProcess;
  readonly #input: PassThrough;
  readonly #conn: MessageConnection;
  readonly #stderrTail: string[] = [];
  readonly #stderrLines: number;
  readonly #pending = new Set<(e: Error) => void>();
  /** Output handlers by request id; `#nextOutput` is the one of the request being sent. */
  readonly #outputHandlers = new Map<rpc.CancellationId, (params: OutputNotification) => void>();
  #nextOutput: ((params: OutputNotification) => void) | undefined;
  readonly #sandboxes = new Set<Sandbox>();
  #lastTemplate: string | undefined;
  #death: WorkerExitedError | undefined;
  #spawnError: Error | undefined;
  /** Settles when the worker process has exited (never rejects). */
  readonly exited: Promise<{ exitCode: number | null; signal: NodeJS.Signals | null }>;

  private constructor(opts: StartOptions) {
    this.binary = findBinary(opts.binary);
    this.#stderrLines = opts.stderrLines ?? 20;
    this.#child = spawn(this.binary, opts.args ?? ["serve"], {
      env: opts.env ?? process.env,
      stdio: ["pipe", "pipe", "pipe"],
    });
    this.pid = this.#child.pid;
    const child = this.#child;
    // vscode-jsonrpc writes into a PassThrough piped to the worker's stdin: an EPIPE once the worker died
    // then never escapes as an unhandled rejection inside the writer; the exit path reports the death.
    this.#input = new PassThrough();
    this.#input.pipe(child.stdin!);
    child.stdin!.on("error", () => {
      this.#input.unpipe();
      this.#input.resume(); // discard what is still written
    });
    let partial = "";
    child.stderr!.setEncoding("utf8");
    child.stderr!.on("data", (s: string) => {
      const lines = (partial + s).split("\n");
      partial = lines.pop()!;
      for (const line of lines) this.#stderrLine(line, opts.onStderr);
    });
    let exitInfo: { exitCode: number | null; signal: NodeJS.Signals | null } | undefined;
    this.exited = new Promise((resolveExit) => {
      const finish = () => {
        if (!exitInfo) return;
        if (partial) {
          this.#stderrLine(partial, opts.onStderr);
          partial = "";
        }
        this.#die(exitInfo.exitCode, exitInfo.signal);
        resolveExit(exitInfo);
      };
      child.on("error", (err) => {
        this.#spawnError = err;
        if (child.pid === undefined) {
          exitInfo = { exitCode: null, signal: null };
          finish();
        }
      });
      child.on("exit", (exitCode, signal) => {
        exitInfo = { exitCode, signal };
        // Give stderr a moment to drain (a grandchild may hold it open), then fail pending calls.
        setTimeout(finish, 100).unref();
      });
      child.on("close", finish);
    });

    // Streamed output names the request it belongs to; vscode-jsonrpc shows a request's id only to its
    // cancellation strategy, right before sending it, and tells it when the request is settled.
    const sender = rpc.CancellationSenderStrategy.Message;
    this.#conn = rpc.createMessageConnection(
      new FrameReader(child.stdout!),
      new FrameWriter(this.#input),
      undefined,
      {
        cancellationStrategy: {
          receiver: rpc.CancellationReceiverStrategy.Message,
          sender: {
            sendCancellation: (conn, id) => sender.sendCancellation(conn, id),
            enableCancellation: (request) => {
              if (this.#nextOutput && request.id !== null) this.#outputHandlers.set(request.id, this.#nextOutput);
              this.#nextOutput = undefined;
            },
            cleanup: (id) => {
              this.#outputHandlers.delete(id);
              sender.cleanup(id);
            },
          },
        },
      },
    );
    this.#conn.onNotification("sandbox.output", (params: OutputNotification) => {
      this.#outputHandlers.get(params.request as rpc.CancellationId)?.(params);
    });
    this.#conn.onError(() => {}); // framing errors surface as worker death or call errors
    this.#conn.listen();
  }

  /** Spawns the worker and checks it answers (`worker.info`). */
  static async start(opts: StartOptions = {}): Promise<Zeroboot> {
    const zb = new Zeroboot(opts);
    try {
      await zb.call("worker.info", {} as ParamsOf<"worker.info">);
    } catch (e) {
      if (zb.#spawnError) throw new WorkerSpawnError(`cannot start ${zb.binary}: ${zb.#spawnError.message}`, { cause: zb.#spawnError });
      zb.#child.kill("SIGKILL");
      throw e;
    }
    return zb;
  }

  #stderrLine(line: string, cb?: (line: string) => void) {
    this.#stderrTail.push(line);
    if (this.#stderrTail.length > this.#stderrLines) this.#stderrTail.shift();
    cb?.(line);
  }

  #die(exitCode: number | null, signal: NodeJS.Signals | null) {
    if (this.#death) return;
    this.#death = new WorkerExitedError(exitCode, signal, [...this.#stderrTail]);
    for (const reject of this.#pending) reject(this.#death);
    this.#pending.clear();
    this.#conn.dispose();
  }

  /** Whether the worker process is still running. */
  get alive(): boolean {
    return this.#death === undefined;
  }

  /** Calls any method of the schema. Rejects with a typed error on an error response. */
  call<M extends MethodName>(method: M, params: ParamsOf<M>, opts: CallOptions = {}): Promise<ResultOf<M>> {
    if (this.#death) return Promise.reject(new WorkerExitedError(this.#death.exitCode, this.#death.signal, this.#death.stderrTail, method));
    const { signal, onNotification } = opts;
    if (signal?.aborted) return Promise.reject(errorFromCode(-32800, "request cancelled before it was sent", undefined, method));
    return new Promise<ResultOf<M>>((resolveCall, rejectCall) => {
      const onDeath = (e: Error) => {
        const d = e as WorkerExitedError;
        rejectCall(new WorkerExitedError(d.exitCode, d.signal, d.stderrTail, method));
      };
      this.#pending.add(onDeath);
      let cts: rpc.CancellationTokenSource | undefined;
      let onAbort: (() => void) | undefined;
      if (signal) {
        cts = new rpc.CancellationTokenSource();
        onAbort = () => cts!.cancel();
        signal.addEventListener("abort", onAbort, { once: true });
      }
      const done = () => {
        this.#pending.delete(onDeath);
        if (onAbort) signal!.removeEventListener("abort", onAbort);
        cts?.dispose();
      };
      // Only pass a token when there is one: vscode-jsonrpc counts a trailing `undefined` as a second param
      // and would send the params as an array.
      this.#nextOutput = onNotification;
      let sent: Promise<ResultOf<M>>;
      try {
        sent = cts ? this.#conn.sendRequest<ResultOf<M>>(method, params, cts.token) : this.#conn.sendRequest<ResultOf<M>>(method, params);
      } finally {
        this.#nextOutput = undefined;
      }
      sent.then(
        (r) => {
          done();
          resolveCall(r);
        },
        (e: unknown) => {
          done();
          if (!(e instanceof rpc.ResponseError) || e.code === rpc.ErrorCodes.MessageWriteError) {
            // stdin is closed: the worker is exiting. Its exit rejects the call with the exit status; in case
            // it lingers, fail with the write error after a grace period.
            if (this.#death) return onDeath(this.#death);
            this.#pending.add(onDeath);
            setTimeout(() => {
              if (this.#pending.delete(onDeath)) rejectCall(new ZerobootError(`${method}: cannot write to the worker: ${(e as Error)?.message ?? e}`));
            }, 5000).unref();
          } else rejectCall(errorFromCode(e.code, e.message, e.data, method));
        },
      );
    });
  }

  /** Loads a template: `{builtin: "bare"}` or `{path}`. */
  async loadTemplate(spec: ParamsOf<"template.load">, opts?: CallOptions): Promise<Template> {
    const t = toTemplate(await this.call("template.load", spec, opts));
    this.#lastTemplate = t.id;
    return t;
  }

  /** Runs `code` in a fresh sandbox forked from a template, then kills it: one call, nothing to clean up.
   * `await zb.runCode("print(1 + 1)")`, `await zb.runCode("1 + 1", "javascript")`. */
  async runCode(code: string, language: Language = "python", opts: RunCodeOnceOptions = {}): Promise<CodeResult> {
    const template = opts.template ?? this.#lastTemplate;
    if (template === undefined) throw new ZerobootError("runCode: no template loaded; load one or pass `template`");
    const params: ParamsOf<"sandbox.run_code"> = { template: templateId(template), language, code };
    if (opts.network !== undefined) params.network = opts.network;
    runParams(params, opts);
    return codeResult(await this.call("sandbox.run_code", params, { signal: opts.signal }));
  }

  /** Lists the loaded templates. */
  async templates(opts?: CallOptions): Promise<ResultOf<"template.list">["templates"]> {
    return (await this.call("template.list", {} as ParamsOf<"template.list">, opts)).templates;
  }

  /** Unloads a template; refused while its sandboxes live unless `force` (kills them) or `keepSandboxes`. */
  async unloadTemplate(template: Template | string, force = false, opts: UnloadOptions = {}): Promise<ResultOf<"template.unload">> {
    const params: ParamsOf<"template.unload"> = { template: templateId(template), force };
    if (opts.keepSandboxes) params.keep_sandboxes = true;
    return this.call("template.unload", params, { signal: opts.signal });
  }

  /** Saves a template to a file. */
  async saveTemplate(template: Template | string, path: string, opts?: CallOptions): Promise<ResultOf<"template.save">> {
    return this.call("template.save", { template: templateId(template), path }, opts);
  }

  /** Forks one sandbox from a template. */
  async fork(template: Template | string, opts: ForkOptions = {}): Promise<Sandbox> {
    const params = { template: templateId(template), ...(opts.network !== undefined && { network: opts.network }) };
    const r = (await this.call("sandbox.fork", params, opts)) as { sandbox: string; fork_us: number };
    return this.#adopt(r.sandbox, templateId(template), r.fork_us);
  }

  /** Forks `count` sandboxes in one call. */
  async forkMany(template: Template | string, count: number, opts: ForkOptions = {}): Promise<Sandbox[]> {
    const params = { template: templateId(template), count, ...(opts.network !== undefined && { network: opts.network }) };
    const r = (await this.call("sandbox.fork", params, opts)) as {
      sandboxes: { sandbox: string; fork_us: number }[];
    };
    return r.sandboxes.map((s) => this.#adopt(s.sandbox, templateId(template), s.fork_us));
  }

  /** Two one-shots (fork, run, kill in one call), told apart by the second argument:
   * `zb.run(code, language?)` runs code as {@link Zeroboot.runCode} does (`await zb.run("print(1 + 1)")`,
   * `await zb.run("1 + 1", "javascript")`); `zb.run(template, argv)` runs a command (`sandbox.run`) and
   * rejects with the exec's error (the sandbox is killed either way). */
  async run(code: string, language?: Language, opts?: RunCodeOnceOptions): Promise<CodeResult>;
  async run(template: Template | string, argv: string[], opts?: ExecOptions): Promise<RunResult>;
  async run(
    first: Template | string,
    second: string[] | Language = "python",
    opts: ExecOptions | RunCodeOnceOptions = {},
  ): Promise<RunResult | CodeResult> {
    if (!Array.isArray(second)) return this.runCode(first as string, second, opts as RunCodeOnceOptions);
    const params = { template: templateId(first), ...execParams(second, opts as ExecOptions) };
    return runResult((await this.call("sandbox.run", params, callOptions(opts as ExecOptions))) as RawRunResult);
  }

  /** {@link Zeroboot.run} in `count` fresh forks at once: one outcome per run, a {@link RunResult} or the
   * error it failed with, in no particular order (`OutputChunk.sandbox` tells streamed chunks apart). */
  async runMany(template: Template | string, argv: string[], count: number, opts: ExecOptions = {}): Promise<(RunResult | ZerobootRpcError)[]> {
    const params = { template: templateId(template), count, ...execParams(argv, opts) };
    const r = (await this.call("sandbox.run", params, callOptions(opts))) as {
      results: (RawRunResult | { sandbox: string; error: { code: number; message: string; data?: unknown } })[];
    };
    return r.results.map((x) => ("error" in x ? errorFromCode(x.error.code, x.error.message, x.error.data, "sandbox.run") : runResult(x)));
  }

  #adopt(id: string, template: string, forkUs: number): Sandbox {
    const sb = new Sandbox(this, id, template, forkUs, (s) => this.#sandboxes.delete(s));
    this.#sandboxes.add(sb);
    return sb;
  }

  /** Lists the worker's live sandboxes. */
  async sandboxes(opts?: CallOptions): Promise<ResultOf<"sandbox.list">> {
    return this.call("sandbox.list", {} as ParamsOf<"sandbox.list">, opts);
  }

  /** The worker's version, engine and limits. */
  async info(opts?: CallOptions): Promise<ResultOf<"worker.info">> {
    return this.call("worker.info", {} as ParamsOf<"worker.info">, opts);
  }

  /** A round trip that does nothing in the worker. */
  async ping(opts?: CallOptions): Promise<void> {
    await this.call("worker.ping", {} as ParamsOf<"worker.ping">, opts);
  }

  /** The OpenRPC document the worker serves. */
  async discover(opts?: CallOptions): Promise<ResultOf<"rpc.discover">> {
    return this.call("rpc.discover", {} as ParamsOf<"rpc.discover">, opts);
  }

  /** Kills every sandbox this client forked, sends `shutdown` then `exit`, and waits for the process to end
   * (SIGKILL after `graceMs`). Safe to call more than once and after the worker died. */
  async stop(graceMs = 5000): Promise<{ exitCode: number | null; signal: NodeJS.Signals | null }> {
    if (this.alive) {
      await Promise.allSettled([...this.#sandboxes].map((s) => s.kill()));
      try {
        await this.call("shutdown", {} as ParamsOf<"shutdown">);
        await this.#conn.sendNotification("exit");
      } catch {
        /* already dying */
      }
      this.#input.end();
    }
    const timer = setTimeout(() => this.#child.kill("SIGKILL"), graceMs);
    try {
      return await this.exited;
    } finally {
      clearTimeout(timer);
    }
  }

  /** Sends a signal to the worker process (tests use it to simulate a crash). */
  kill(signal: NodeJS.Signals = "SIGKILL"): void {
    this.#child.kill(signal);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop();
  }
}

function templateId(t: Template | string): string {
  return typeof t === "string" ? t : t.id;
}

function codeResult(r: ResultOf<"sandbox.run_code">): CodeResult {
  return { ...execResult(r), result: r.result, error: r.error, raw: r };
}

/** Copies the options every code run takes into its params. */
function runParams(params: ParamsOf<"sandbox.run_code">, opts: Omit<RunCodeOptions, "language" | "context">) {
  if (opts.env !== undefined) params.env = opts.env;
  if (opts.cwd !== undefined) params.cwd = opts.cwd;
  if (opts.timeoutMs !== undefined) params.timeout_ms = opts.timeoutMs;
  if (opts.outputCap !== undefined) params.output_cap = opts.outputCap;
}

/** A sandbox forked from a template. */
export class Sandbox implements AsyncDisposable {
  #killed = false;
  constructor(
    readonly worker: Zeroboot,
    readonly id: string,
    readonly template: string,
    /** Fork latency the worker measured, in microseconds. */
    readonly forkUs: number,
    private readonly onGone: (s: Sandbox) => void,
  ) {}

  /** Runs `argv` in the sandbox and waits for it to end. */
  async exec(argv: string[], opts: ExecOptions = {}): Promise<ExecResult> {
    const params = { sandbox: this.id, ...execParams(argv, opts) };
    return execResult(await this.worker.call("sandbox.exec", params, callOptions(opts)));
  }

  /** Runs `code` like a notebook cell (default language Python): `result` is the text of its last expression's
   * value, `error` its uncaught exception. With `context`, cells share one interpreter's state. */
  async runCode(code: string, opts: RunCodeOptions = {}): Promise<CodeResult> {
    const params: ParamsOf<"sandbox.run_code"> = { sandbox: this.id, language: opts.language ?? "python", code };
    if (opts.context !== undefined) params.context = opts.context;
    runParams(params, opts);
    if (opts.onOutput) params.stream = true;
    return codeResult(await this.worker.call("sandbox.run_code", params, callOptions(opts)));
  }

  /** The persistent contexts alive in the sandbox. */
  async contexts(opts?: CallOptions): Promise<ResultOf<"sandbox.contexts">["contexts"]> {
    return (await this.worker.call("sandbox.contexts", { sandbox: this.id }, opts)).contexts;
  }

  /** Runs `argv` with streamed output: `for await (const chunk of sb.stream(argv)) ...; await s.result`. */
  stream(argv: string[], opts: Omit<ExecOptions, "onOutput"> = {}): ExecStream {
    const queue: OutputChunk[] = [];
    let wake: (() => void) | undefined;
    let ended = false;
    const result = this.exec(argv, {
      ...opts,
      onOutput: (c) => {
        queue.push(c);
        wake?.();
      },
    }).finally(() => {
      ended = true;
      wake?.();
    });
    result.catch(() => {}); // the iterator or the caller of `result` sees the error
    return {
      result,
      async *[Symbol.asyncIterator]() {
        for (;;) {
          while (queue.length) yield queue.shift()!;
          if (ended) break;
          await new Promise<void>((r) => (wake = r));
          wake = undefined;
        }
        await result; // rethrow the exec's error at the end of the iteration
      },
    };
  }

  /** Writes `data` (a string is written as UTF-8) to `path`, replacing any file there, and returns the byte count.
   * The worker moves it in chunks and makes it visible only once complete. */
  async writeFile(path: string, data: string | Uint8Array, opts: WriteFileOptions = {}): Promise<number> {
    const params: ParamsOf<"sandbox.write_file"> = { sandbox: this.id, path };
    if (typeof data === "string") params.data = data;
    else params.data_base64 = Buffer.from(data.buffer, data.byteOffset, data.byteLength).toString("base64");
    if (opts.mode !== undefined) params.mode = opts.mode;
    return (await this.worker.call("sandbox.write_file", params, { signal: opts.signal })).bytes;
  }

  /** Reads `path` as bytes (decode text with `new TextDecoder().decode(...)`). */
  async readFile(path: string, opts: ReadFileOptions = {}): Promise<Uint8Array> {
    const params: ParamsOf<"sandbox.read_file"> = { sandbox: this.id, path, encoding: "base64" };
    if (opts.maxBytes !== undefined) params.max_bytes = opts.maxBytes;
    const r = await this.worker.call("sandbox.read_file", params, { signal: opts.signal });
    return new Uint8Array(Buffer.from(r.data, "base64"));
  }

  /**
   * Branches this sandbox: its state and the pages it changed become a new template layered over its
   * own (fork it like any template: `worker.forkMany(await sb.snapshot(), n)`); the sandbox carries on.
   */
  async snapshot(opts: SnapshotOptions = {}): Promise<Template> {
    const params: ParamsOf<"sandbox.snapshot"> = { sandbox: this.id };
    if (opts.fullCopy) params.full_copy = true;
    return toTemplate(await this.worker.call("sandbox.snapshot", params, { signal: opts.signal }));
  }

  /**
   * `count` running copies of this sandbox as it is now: a snapshot forked `count` times. The snapshot
   * is released at once; the copies keep what they need of it until they are killed.
   */
  async branch(count = 1, opts?: CallOptions): Promise<Sandbox[]> {
    const t = await this.snapshot(opts);
    try {
      return await this.worker.forkMany(t, count, opts);
    } finally {
      await this.worker.unloadTemplate(t, false, { keepSandboxes: true });
    }
  }

  /** Resource usage of the sandbox. */
  stats(opts?: CallOptions): Promise<ResultOf<"sandbox.stats">> {
    return this.worker.call("sandbox.stats", { sandbox: this.id }, opts);
  }

  /** Kills the sandbox. Killing twice, or after the worker died, is a no-op. */
  async kill(): Promise<void> {
    if (this.#killed) return;
    this.#killed = true;
    this.onGone(this);
    if (!this.worker.alive) return;
    await this.worker.call("sandbox.kill", { sandbox: this.id });
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.kill();
  }
}

export { ZerobootRpcError };
