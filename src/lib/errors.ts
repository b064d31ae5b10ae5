/**
 * The error model, after undici's lib/core/errors.js: one class with a stable `code` that callers branch on (never on
 * message text), the one union those codes come from, and one normaliser to the JSON shape stored and shown.
 * `retryable: false` marks failures that no retry can fix; the retry helper (lib/retry.ts) reads it.
 */
export type ErrorCode =
  // step failures
  | 'SENSOR_TIMEOUT'
  | 'PREVIOUS_RUN_FAILED'
  | 'ABORTED'
  | 'DB_ERROR'
  | 'CHILD_FAILED'
  | 'CHILD_TIMEOUT'
  | 'CHILD_NOT_CONFIGURED'
  | 'POOL_TIMEOUT'
  | 'SAP_HTTP_ERROR'
  | 'SAP_TIMEOUT'
  | 'SAP_UNREACHABLE'
  | 'SAP_BAD_RESPONSE'
  | 'MAIL_FAILED'
  // the run was taken over by another process: this one's write was refused (l2flow.assert_owner, sql/008)
  | 'NOT_OWNER'
  // run-level outcomes, written by the machine (RUN_TIMEOUT), the supervisor (RESTORE_FAILED), run-store (CANCELLED)
  // and an operator's `l2flow mark --failed` (MARKED_FAILED)
  | 'RUN_TIMEOUT'
  | 'RESTORE_FAILED'
  | 'CANCELLED'
  | 'MARKED_FAILED'
  | 'INTERNAL';

/** A failure of one workflow step (or of the run), carrying a stable code and optional details for the run's error. */
export class StepError extends Error {
  override readonly name = 'StepError';
  readonly code: ErrorCode;
  readonly retryable: boolean;
  readonly details: Record<string, unknown> | undefined;

  constructor(
    code: ErrorCode,
    message: string,
    opts: { retryable?: boolean; cause?: unknown; details?: Record<string, unknown> } = {},
  ) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.code = code;
    this.retryable = opts.retryable ?? false;
    this.details = opts.details;
  }
}

/** The SQLSTATE l2flow.assert_owner raises (sql/008_owner_fence.sql). */
export const NOT_OWNER_SQLSTATE = 'L2F01';

/**
 * NOT_OWNER when `err` (or an error it wraps) is l2flow.assert_owner's refusal: the run is executed by another
 * process now, and this one must stop executing it (never a step failure: no retry, no failure mail). Else undefined.
 */
export function notOwnerError(err: unknown): StepError | undefined {
  for (let e = err as { code?: unknown; message?: unknown; cause?: unknown } | undefined, depth = 0; e && depth < 5; e = e.cause as typeof e, depth++) {
    if (e instanceof StepError && e.code === 'NOT_OWNER') return e;
    if (e.code === NOT_OWNER_SQLSTATE) return new StepError('NOT_OWNER', String(e.message), { cause: err });
  }
  return undefined;
}

/**
 * The plain, JSON-safe shape of an error as stored in a run and shown to operators. `code` is one of ErrorCode for
 * our errors; a foreign error keeps its own (ECONNREFUSED …), and rows written by older versions may hold others.
 */
export interface ErrorInfo {
  code: string;
  message: string;
  details?: Record<string, unknown>;
  retryable?: boolean;
}

/** Reduce anything thrown to `{ code, message, details?, retryable? }`; PostgreSQL errors keep their SQLSTATE. */
export function toErrorInfo(err: unknown): ErrorInfo {
  if (err instanceof StepError) {
    const info: ErrorInfo = { code: err.code, message: err.message };
    if (err.details) info.details = err.details;
    info.retryable = err.retryable;
    return info;
  }
  if (err instanceof Error) {
    const pgCode = (err as { code?: unknown }).code;
    if (typeof pgCode === 'string' && /^[0-9A-Z]{5}$/.test(pgCode)) {
      return { code: 'DB_ERROR', message: `${err.message} (SQLSTATE ${pgCode})`, details: { sqlstate: pgCode } };
    }
    return { code: typeof pgCode === 'string' ? pgCode : 'INTERNAL', message: err.message };
  }
  if (err && typeof err === 'object' && 'message' in err) {
    const o = err as { code?: unknown; message?: unknown };
    return { code: typeof o.code === 'string' ? o.code : 'INTERNAL', message: String(o.message) };
  }
  return { code: 'INTERNAL', message: String(err) };
}

/** The first string `code` along an error's `cause` chain (undici wraps the socket's ECONNREFUSED in its own error). */
export function codeInCauses(err: unknown): string | undefined {
  for (let e: unknown = err, depth = 0; e && typeof e === 'object' && depth < 4; e = (e as { cause?: unknown }).cause, depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'string') return code;
  }
  return undefined;
}

/** Throw a StepError('ABORTED') when the signal has fired. */
export function throwIfAborted(signal: AbortSignal | undefined, what: string): void {
  if (signal?.aborted) throw new StepError('ABORTED', `${what} was cancelled`, { cause: signal.reason });
}

const CONNECTION_SQLSTATE = /^(08|57P0[123])/; // connection exception; admin/crash shutdown, cannot connect now
const CONNECTION_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN']);
const CONNECTION_MESSAGES = /^(Connection terminated|timeout exceeded when trying to connect|Client has encountered a connection error)/;

/** Whether `err` says the database could not be reached (down, restarting, connection lost), not that it refused the work. */
export function isConnectionError(err: unknown): boolean {
  if (!err || typeof err !== 'object') return false;
  const { code, message } = err as { code?: unknown; message?: unknown };
  if (typeof code === 'string' && (CONNECTION_SQLSTATE.test(code) || CONNECTION_CODES.has(code))) return true;
  return typeof message === 'string' && CONNECTION_MESSAGES.test(message);
}

/** Whether trying again could help: a StepError says so itself; anything else only when the database was unreachable. */
export function isRetryable(err: unknown): boolean {
  return err instanceof StepError ? err.retryable : isConnectionError(err);
}
