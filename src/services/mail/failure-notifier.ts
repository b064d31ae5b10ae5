import type pg from 'pg';
import { StepError, throwIfAborted } from '../../lib/errors.js';
import { retry, type RetryPolicy } from '../../lib/retry.js';
import { queueMail } from './outbox.js';
import { renderFailureEmail, type RenderedEmail } from './render.js';
import type { Logger, RunFailure, StepContext, StepFn } from '../types.js';


/**
 * The `email_on_failure` step: queue the failure mail in l2flow.email_outbox, at most once per run attempt, so the run
 * can be marked failed at once while the dispatcher delivers. `onQueued` lets the host wake its dispatcher.
 *
 * The outbox lives in the warehouse, so a failure caused by the warehouse going away (a restart) would otherwise end
 * the run without any mail: while the database is unreachable the step waits and tries again, with backoff, for up to
 * `unreachableRetryMs` (or until the run is stopped).
 */
export function createFailureNotifier(opts: {
  pool: pg.Pool; recipients: string[]; logger: Logger; onQueued?: (outboxId: number) => void;
  unreachableRetryMs?: number; retryBaseDelayMs?: number; retryMaxDelayMs?: number;
}): StepFn<StepContext & { failure: RunFailure }, { outboxId: number }> {
  if (opts.recipients.length === 0) throw new Error('Failure mail has no recipients: set EMAIL_RECIPIENTS to at least one address');
  const log = opts.logger.child({ module: 'failure-email' });
  const { unreachableRetryMs = 15 * 60_000, retryBaseDelayMs = 250, retryMaxDelayMs = 5_000 } = opts;

  const queue = (input: StepContext & { failure: RunFailure }, mail: RenderedEmail) =>
    queueMail(opts.pool, { runId: input.runId, attempt: input.attempt, kind: 'failure' }, opts.recipients, mail);

  return async (input, signal) => {
    throwIfAborted(signal, 'email_on_failure');
    const mail = renderFailureEmail(input);
    // The database's own restart takes seconds: 250 ms, 500 ms, 1 s, 2 s, 4 s, then every 5 s until the budget is spent.
    const policy: RetryPolicy = {
      maxTries: Infinity, baseDelayMs: retryBaseDelayMs, maxDelayMs: retryMaxDelayMs, jitter: 'none', maxElapsedMs: unreachableRetryMs,
    };
    let result: { outboxId: number; queued: boolean };
    try {
      result = await retry(async (tries) => {
        const queued = await queue(input, mail);
        if (tries > 1) log.info({ runId: input.runId, tries }, 'database reachable again; queueing the failure mail');
        return queued;
      }, policy, {
        what: 'email_on_failure',
        signal,
        // Only an unreachable database is waited for (isRetryable's default); a refusal fails the step at once.
        onRetry: (err, tries) => {
          if (tries > 1) return;
          log.warn({ runId: input.runId, logicalDate: input.logicalDate, err: { message: (err as Error).message, code: (err as { code?: unknown }).code } },
            'database unreachable: the failure mail will be queued once it is back');
        },
      });
    } catch (err) {
      if (err instanceof StepError && err.code === 'ABORTED') throw err;
      throw new StepError('DB_ERROR', `email_on_failure for ${input.logicalDate} could not queue the failure mail: ${(err as Error).message}. Check the l2flow database; the step is safe to re-run.`,
        { retryable: true, cause: err });
    }
    const { outboxId, queued } = result;
    log.info({ runId: input.runId, logicalDate: input.logicalDate, loadId: input.loadId, outboxId, step: input.failure.step },
      queued ? 'failure mail queued' : 'failure mail was already queued');
    opts.onQueued?.(outboxId);
    return { outboxId };
  };
}
