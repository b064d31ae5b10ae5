/**
 * Errors with a stable `code` that callers branch on (never on message text), after undici's
 * lib/core/errors.js. `retryable: false` marks failures that no retry can fix.
 */
export type StepErrorCode =
  | 'SENSOR_TIMEOUT'
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
  | 'INTERNAL';

/** A failure of one workflow step, carrying a stable code and optional details for the run's error. */
export class StepError extends Error {
  override readonly name = 'StepError';
  readonly code: StepErrorCode;
  readonly retryable: boolean;
  readonly details: Record<string, unknown> | undefined;

  constructor(
    code: StepErrorCode,
    message: string,
    opts: { retryable?: boolean; cause?: unknown; details?: Record<string, unknown> } = {},
  ) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.code = code;
    this.retryable = opts.retryable ?? false;
    this.details = opts.details;
  }
}

/** The plain, JSON-safe shape of an error as stored in a run and shown to operators. */
export interface ErrorInfo {
  code: string;
  message: string;
  details?: Record<string, unknown>;
}

/** Reduce anything thrown to `{ code, message, details }`; PostgreSQL errors keep their SQLSTATE. */
export function toErrorInfo(err: unknown): ErrorInfo {
  if (err instanceof StepError) {
    return err.details ? { code: err.code, message: err.message, details: err.details } : { code: err.code, message: err.message };
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
