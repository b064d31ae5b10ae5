import { isRetryable, throwIfAborted } from './errors.js';
import { abortableSleep } from './time.js';

/**
 * How a failing operation is tried again: exponential backoff, capped, with jitter. The wait after failed try `n`
 * is `min(maxDelayMs, baseDelayMs × factor^(n−1))`, then jittered. With `{ baseDelayMs: 1000, maxDelayMs: 60_000 }`:
 * try 1 waits up to 1 s, try 2 up to 2 s, try 5 up to 16 s, and from try 7 on up to 60 s.
 */
export interface RetryPolicy {
  /** Tries in all, the first included (1 = never retry); Infinity to retry until `maxElapsedMs` or the signal. */
  maxTries: number;
  /** The wait after the first failed try, before jitter. */
  baseDelayMs: number;
  /** No wait is longer, a server's Retry-After included. */
  maxDelayMs: number;
  /** Growth of the wait per try; default 2. */
  factor?: number;
  /**
   * 'full' (default): anywhere in [0, wait), which spreads a herd of clients best; 'equal': in [wait/2, wait], never
   * much sooner; 'none': exactly the wait, for a single client retrying its own database.
   */
  jitter?: 'full' | 'equal' | 'none';
  /** Give up instead of waiting when the wait would end more than this long after the first try began. */
  maxElapsedMs?: number;
}

// Past 2^30 the wait is at any sane cap already; the bound keeps `factor ** n` finite (0 × Infinity is NaN).
const MAX_EXPONENT = 30;

/** Milliseconds to wait after failed try `tryNo` (1-based) under `policy`; `random` returns [0, 1) like Math.random. */
export function backoffDelay(policy: RetryPolicy, tryNo: number, random: () => number = Math.random): number {
  const exponent = Math.min(Math.max(tryNo - 1, 0), MAX_EXPONENT);
  const wait = Math.min(policy.maxDelayMs, policy.baseDelayMs * (policy.factor ?? 2) ** exponent);
  switch (policy.jitter ?? 'full') {
    case 'none':
      return Math.round(wait);
    case 'equal':
      return Math.round(wait / 2 + (random() * wait) / 2);
    case 'full':
      return Math.floor(random() * wait);
  }
}

export interface RetryOptions {
  /** Names the operation in the ABORTED error thrown when `signal` fires. */
  what: string;
  /** Stops the retries, the wait between two tries included. */
  signal?: AbortSignal;
  /** Whether a failure is worth another try; default: the error's own `retryable` (see lib/errors.ts isRetryable). */
  isRetryable?: (err: unknown) => boolean;
  /** A wait the failure itself asks for (an HTTP Retry-After), used instead of the backoff; still capped by maxDelayMs. */
  requestedDelayMs?: (err: unknown) => number | undefined;
  /** Called, and awaited, before each wait: log or record the failed try here. */
  onRetry?: (err: unknown, tryNo: number, delayMs: number) => void | Promise<void>;
  random?: () => number;
}

/**
 * Run `fn` (given its 1-based try number) until it succeeds; rethrow at once an error that is not retryable, and the
 * last error once the policy's tries or time are used up. A fired signal ends it with StepError('ABORTED').
 */
export async function retry<T>(fn: (tryNo: number) => Promise<T>, policy: RetryPolicy, opts: RetryOptions): Promise<T> {
  const started = Date.now();
  const worthRetrying = opts.isRetryable ?? isRetryable;
  for (let tryNo = 1; ; tryNo++) {
    throwIfAborted(opts.signal, opts.what);
    try {
      return await fn(tryNo);
    } catch (err) {
      if (tryNo >= policy.maxTries || !worthRetrying(err)) throw err;
      const asked = opts.requestedDelayMs?.(err);
      const delayMs = asked === undefined ? backoffDelay(policy, tryNo, opts.random) : Math.min(asked, policy.maxDelayMs);
      if (policy.maxElapsedMs !== undefined && Date.now() - started + delayMs > policy.maxElapsedMs) throw err;
      await opts.onRetry?.(err, tryNo, delayMs);
      await abortableSleep(delayMs, opts.signal);
    }
  }
}
