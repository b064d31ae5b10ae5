import { backoffDelay } from '../lib/retry.js';
import type { StepId } from './steps.js';

/**
 * Per-step retries, as Airflow's `retries` / `retry_delay` / `retry_exponential_backoff` / `max_retry_delay`:
 * after failed try n the step waits min(maxDelayMs, delayMs × 2^(n−1)), no jitter (one run retrying its own step
 * herds nobody), then runs again, at most `retries` times. The wake-up time is an absolute timestamp in the
 * machine's context, so a restore re-arms it unchanged.
 */
export interface StepRetryPolicy {
  /** Tries after the first; 0 = never retry (the original DAG's default). */
  retries: number;
  /** Wait after the first failed try. */
  delayMs: number;
  /** No wait is longer. */
  maxDelayMs: number;
}

/**
 * Failures no later try can fix, so they end the step at once whatever `retries` says: a sensor that used up its
 * timeout (Airflow does not retry AirflowSensorTimeout either), a child missing from the configuration, and a SAP
 * 4xx other than 429 (SAP refused the payload; the step's own SAP retries already handled 5xx and timeouts).
 * Everything else is retried, as Airflow retries any failed task: a failed procedure may succeed once a lock is
 * gone or a source table is fixed.
 */
const NEVER_RETRIED = new Set(['SENSOR_TIMEOUT', 'CHILD_NOT_CONFIGURED', 'RUN_TIMEOUT', 'CANCELLED', 'ABORTED']);

/** Whether a step failure may be tried again (see NEVER_RETRIED for the exceptions and why). */
export function isRetriedFailure(error: { code: string; retryable?: boolean }): boolean {
  if (NEVER_RETRIED.has(error.code)) return false;
  return !(error.code === 'SAP_HTTP_ERROR' && error.retryable === false);
}

/** Milliseconds to wait after failed try `tryNo` (1-based) of a step under `policy`. */
export function stepRetryDelayMs(policy: StepRetryPolicy, tryNo: number): number {
  return backoffDelay({ maxTries: Infinity, baseDelayMs: policy.delayMs, maxDelayMs: policy.maxDelayMs, jitter: 'none' }, tryNo);
}

/**
 * When failed try `tryNo` of `step` is tried again (epoch ms), or null when it is not: no retries left, a failure
 * no retry fixes, or a wake-up at or past the run deadline (the run timeout wins over retries).
 */
export function nextTryAt(
  retry: Partial<Record<StepId, StepRetryPolicy>> | undefined,
  step: StepId,
  tryNo: number,
  error: { code: string; retryable?: boolean },
  runDeadline: number | null,
  now: number,
): number | null {
  const policy = retry?.[step];
  if (!policy || tryNo > policy.retries || !isRetriedFailure(error)) return null;
  const at = now + stepRetryDelayMs(policy, tryNo);
  return runDeadline !== null && at >= runDeadline ? null : at;
}
