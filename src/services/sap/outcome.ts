import { StepError } from '../../lib/errors.js';

const MESSAGE_EXCERPT_CHARS = 200;

/** How one POST to SAP ended: an HTTP answer, no answer in time, or no connection. */
export type TryOutcome =
  | { kind: 'http'; status: number; statusText: string; excerpt: string; retryAfterMs: number | undefined }
  | { kind: 'timeout'; ms: number; detail: string }
  | { kind: 'unreachable'; detail: string };

function excerptOf(text: string, max: number): string {
  const flat = text.replace(/\s+/g, ' ').trim();
  if (flat === '') return '(empty body)';
  return flat.length > max ? `${flat.slice(0, max)}…` : flat;
}

/** Whether a retry could change this outcome: no answer, a 5xx, or 429. */
export function retryableOutcome(outcome: TryOutcome): boolean {
  return outcome.kind !== 'http' || outcome.status >= 500 || outcome.status === 429;
}

/** The step's error for a send that ended with `outcome`; `where` is the endpoint as shown to humans. */
export function sapFailure(outcome: TryOutcome, at: { where: string; key: string; tries: number; retryable: boolean }): StepError {
  const { where, key, tries, retryable } = at;
  const details = { url: where, idempotencyKey: key, tries, ...(outcome.kind === 'http' ? { httpStatus: outcome.status } : {}) };
  const after = retryable ? `gave up after ${tries} ${tries === 1 ? 'try' : 'tries'}` : 'not retried';
  if (outcome.kind === 'http') {
    const text = `${outcome.status}${outcome.statusText ? ` ${outcome.statusText}` : ''}`;
    return new StepError('SAP_HTTP_ERROR', `SAP answered ${text}: ${excerptOf(outcome.excerpt, MESSAGE_EXCERPT_CHARS)} (POST ${where}; ${after})`, { retryable, details });
  }
  if (outcome.kind === 'timeout') {
    return new StepError('SAP_TIMEOUT', `SAP gave no answer within ${outcome.ms} ms (POST ${where}; ${after})`, { retryable, details });
  }
  return new StepError('SAP_UNREACHABLE', `SAP is unreachable at ${where}: ${outcome.detail} (${after})`, { retryable, details });
}
