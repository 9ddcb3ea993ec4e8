/** Error classes of the client. The per-code subclasses are generated from the schema (see generated.ts). */

/** Base of every error this package throws. */
export class ZerobootError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** The worker answered a call with a JSON-RPC error object. */
export class ZerobootRpcError extends ZerobootError {
  /** JSON-RPC error code. */
  readonly code: number;
  /** The error object's `data` member, if any. */
  readonly data: unknown;
  /** The method that failed. */
  readonly method: string;
  constructor(code: number, message: string, data: unknown, method: string) {
    super(`${method}: ${message} (code ${code})`);
    this.code = code;
    this.data = data;
    this.method = method;
  }
}

/** The worker process exited (killed, crashed, or shut down) while calls were pending, or before a call was made. */
export class WorkerExitedError extends ZerobootError {
  /** Exit code of the worker, or null if a signal ended it. */
  readonly exitCode: number | null;
  /** Signal that ended the worker, if any. */
  readonly signal: NodeJS.Signals | null;
  /** The last lines the worker wrote to stderr. */
  readonly stderrTail: string[];
  constructor(exitCode: number | null, signal: NodeJS.Signals | null, stderrTail: string[], method?: string) {
    const status = signal ? `killed by signal ${signal}` : `exited with code ${exitCode}`;
    const tail = stderrTail.length ? `\nlast lines of its stderr:\n  ${stderrTail.join("\n  ")}` : "\n(its stderr was empty)";
    super(`zeroboot worker ${status}${method ? ` while ${method} was pending` : ""}${tail}`);
    this.exitCode = exitCode;
    this.signal = signal;
    this.stderrTail = stderrTail;
  }
}

/** The worker binary could not be started. */
export class WorkerSpawnError extends ZerobootError {}
