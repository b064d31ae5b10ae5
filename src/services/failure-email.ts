import type pg from 'pg';
import { abortableSleep } from './sleep.js';
import { isConnectionError, StepError, throwIfAborted } from './errors.js';
import type { Mailer } from './mailer.js';
import { checkout } from './sql.js';
import type { Logger, RunFailure, StepContext, StepFn } from './types.js';

export interface FailureEmailInput {
  workflowId: string;
  runId: string;
  logicalDate: string;
  /** Shown when known; the run processes logicalDate - 1. */
  businessDate?: string;
  loadId: number | null;
  attempt: number;
  failure: RunFailure;
}

export interface RenderedEmail { subject: string; text: string; html: string }

const HINTS: Array<[RegExp, string]> = [
  [/^SENSOR_TIMEOUT$/, 'A sensor gave up waiting. Check that the upstream L1→L2 load set its flag in md.dwh_flag for the business date, and that the previous day\'s run ended successfully.'],
  [/^CHILD_/, 'A child workflow failed, timed out or is not configured. Look at the child workflow\'s own run and log first.'],
  [/^SAP_/, 'The readiness flag was not accepted by SAP. Check the SAP endpoint and its answer; SAP may already have the flag if it timed out.'],
  [/^(DB_ERROR|POOL_TIMEOUT)$/, 'The warehouse refused a query or was not reachable in time. Check the warehouse and its sessions.'],
];

/** Escape text for HTML element content and attribute values. */
export function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c] ?? c);
}

/** Build the operator mail for a failed run: subject, plain text and HTML, naming the workflow, date, step, error and load id. */
export function renderFailureEmail(input: FailureEmailInput): RenderedEmail {
  const { workflowId, runId, logicalDate, attempt, failure } = input;
  const loadId = input.loadId === null ? 'not assigned' : String(input.loadId);
  const flat = failure.message.replace(/\s+/g, ' ').trim(); // a header is one line; the bodies keep the full text
  const short = flat.length > 100 ? `${flat.slice(0, 99)}…` : flat;
  const subject = `[l2flow] FAILED ${workflowId} ${logicalDate}: ${failure.step} — ${failure.code}: ${short} (load id ${loadId})`;
  const hint = HINTS.find(([re]) => re.test(failure.code))?.[1] ?? 'Read the error above and the run\'s step history to find the cause.';
  const statusCmd = `l2flow status --date ${logicalDate}`;
  const facts: Array<[string, string]> = [
    ['Workflow', workflowId],
    ['Logical date', input.businessDate ? `${logicalDate} (business date ${input.businessDate})` : logicalDate],
    ['Failed step', failure.step],
    ['Error code', failure.code],
    ['Error message', failure.message],
    ['Load id', loadId],
    ['Run', `${runId} (attempt ${attempt})`],
  ];
  const steps = [
    `See the run's steps, errors and this mail's delivery: ${statusCmd}`,
    hint,
    `When the cause is fixed, clear the run to start attempt ${attempt + 1}; steps that already succeeded are not repeated.`,
  ];

  const width = Math.max(...facts.map(([k]) => k.length)) + 2;
  const text = [
    `The ${workflowId} run for ${logicalDate} failed at step ${failure.step}.`,
    '',
    ...facts.map(([k, v]) => `${`${k}:`.padEnd(width)}${v}`),
    '',
    'What to do next:',
    ...steps.map((s, i) => `  ${i + 1}. ${s}`),
    '',
    '— l2flow (this mail is sent once per failed run attempt)',
    '',
  ].join('\n');

  const e = escapeHtml;
  const cell = 'style="padding:4px 12px 4px 0;vertical-align:top"';
  const html = `<!doctype html>
<html><head><meta charset="utf-8"><title>${e(subject)}</title></head>
<body style="font-family:Arial,Helvetica,sans-serif;font-size:14px;color:#222">
<h2 style="color:#b00020;margin:0 0 12px">${e(workflowId)} failed for ${e(logicalDate)}</h2>
<p>The run failed at step <b>${e(failure.step)}</b>.</p>
<table style="border-collapse:collapse">
${facts.map(([k, v]) => `<tr><th align="left" ${cell}>${e(k)}</th><td ${cell}>${k === 'Error message' ? `<pre style="margin:0;white-space:pre-wrap">${e(v)}</pre>` : e(v)}</td></tr>`).join('\n')}
</table>
<h3>What to do next</h3>
<ol>
<li>See the run's steps, errors and this mail's delivery: <code>${e(statusCmd)}</code></li>
${steps.slice(1).map((s) => `<li>${e(s)}</li>`).join('\n')}
</ol>
<p style="color:#666">— l2flow (this mail is sent once per failed run attempt)</p>
</body></html>
`;
  return { subject, text, html };
}

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

  async function queue(input: StepContext & { failure: RunFailure }, mail: RenderedEmail): Promise<{ outboxId: number; queued: boolean }> {
    const key = [input.runId, input.attempt];
    const inserted = await opts.pool.query<{ id: string }>(
      `insert into l2flow.email_outbox (run_id, attempt, recipients, subject, text_body, html_body)
       values ($1, $2, $3, $4, $5, $6) on conflict (run_id, attempt) do nothing returning id`,
      [...key, opts.recipients, mail.subject, mail.text, mail.html],
    );
    // A separate statement: its fresh snapshot sees a row that a concurrent insert committed meanwhile.
    const row = inserted.rows[0] ?? (await opts.pool.query<{ id: string }>(
      'select id from l2flow.email_outbox where run_id = $1 and attempt = $2', key)).rows[0];
    if (!row) throw new Error('the outbox row vanished right after it was written');
    return { outboxId: Number(row.id), queued: inserted.rows.length === 1 };
  }

  return async (input, signal) => {
    throwIfAborted(signal, 'email_on_failure');
    const mail = renderFailureEmail(input);
    const since = Date.now();
    let result: { outboxId: number; queued: boolean };
    for (let tries = 1; ; tries++) {
      try {
        result = await queue(input, mail);
        if (tries > 1) log.info({ runId: input.runId, tries }, 'database reachable again; queueing the failure mail');
        break;
      } catch (err) {
        const waitMs = Math.min(retryMaxDelayMs, retryBaseDelayMs * 2 ** Math.min(tries - 1, 20));
        if (!isConnectionError(err) || Date.now() - since + waitMs > unreachableRetryMs) {
          throw new StepError('DB_ERROR', `email_on_failure for ${input.logicalDate} could not queue the failure mail: ${(err as Error).message}. Check the l2flow database; the step is safe to re-run.`,
            { retryable: true, cause: err });
        }
        if (tries === 1) {
          log.warn({ runId: input.runId, logicalDate: input.logicalDate, err: { message: (err as Error).message, code: (err as { code?: unknown }).code } },
            'database unreachable: the failure mail will be queued once it is back');
        }
        await abortableSleep(waitMs, signal);
        throwIfAborted(signal, 'email_on_failure');
      }
    }
    const { outboxId, queued } = result;
    log.info({ runId: input.runId, logicalDate: input.logicalDate, loadId: input.loadId, outboxId, step: input.failure.step },
      queued ? 'failure mail queued' : 'failure mail was already queued');
    opts.onQueued?.(outboxId);
    return { outboxId };
  };
}

interface OutboxRow {
  id: string; run_id: string; attempt: number; recipients: string[]; subject: string; text_body: string; html_body: string; tries: number;
}

export interface EmailDispatcher {
  start(): void;
  /** Stop polling and wait for a delivery in flight to be recorded. */
  stop(): Promise<void>;
  /** Deliver due mail now instead of at the next poll. */
  kick(): void;
  /** Try every due mail once; resolves to how many were sent. Throws only when the database fails. */
  drainOnce(): Promise<number>;
}

function errorText(err: unknown): string {
  const e = err as { code?: unknown; responseCode?: unknown; originalCode?: unknown; message?: unknown };
  const code = [e.code, e.originalCode, e.responseCode].filter((x) => typeof x === 'string' || typeof x === 'number').join(' ');
  const message = typeof e.message === 'string' ? e.message : String(err);
  return (code ? `${code}: ${message}` : message).slice(0, 2000);
}

/**
 * Deliver the outbox with retries. Rows are claimed with `for update skip locked` and the lock is held while the
 * mail is sent, so several processes can run dispatchers and a crashed one frees its row with its connection.
 *
 * Delivery is at-least-once: if the SMTP server accepted a mail and the process died (or the database failed) before
 * the 'sent' update committed, the row is still pending and the mail is sent again. The window is the time between
 * the server's 250 and the commit, normally a few milliseconds.
 */
export function createEmailDispatcher(opts: {
  pool: pg.Pool; mailer: Mailer; logger: Logger; pollIntervalMs?: number; baseDelayMs?: number; maxDelayMs?: number; maxTries?: number;
}): EmailDispatcher {
  const { pool, mailer, pollIntervalMs = 5000, baseDelayMs = 1000, maxDelayMs = 300_000, maxTries = 100 } = opts;
  const log = opts.logger.child({ module: 'email-dispatcher' });
  let running = false;
  let stopped = false; // ends a drain between two mails
  let loopDone: Promise<void> = Promise.resolve();
  let wake: (() => void) | undefined;
  let kicked = false;
  const inFlight = new Set<Promise<number>>();

  function backoff(tries: number): number {
    const full = Math.min(maxDelayMs, baseDelayMs * 2 ** Math.min(tries - 1, 30));
    return Math.round(full / 2 + (Math.random() * full) / 2); // "equal jitter": spread out, never sooner than half
  }

  /** Claim one due row not yet tried in this drain, send it and record the outcome in the same transaction. */
  async function deliverOne(tried: string[]): Promise<'none' | 'sent' | 'failed'> {
    const c = await checkout(pool); // the server may restart while a mail is on its way
    const client = c.client;
    let broken: unknown;
    try {
      await client.query('begin');
      const { rows } = await client.query<OutboxRow>(
        `select id, run_id, attempt, recipients, subject, text_body, html_body, tries from l2flow.email_outbox
         where status = 'pending' and next_attempt_at <= now() and id <> all($1::bigint[])
         order by next_attempt_at, id limit 1 for update skip locked`, [tried]);
      const row = rows[0];
      if (!row) {
        await client.query('commit');
        return 'none';
      }
      tried.push(row.id);
      const about = { outboxId: Number(row.id), runId: row.run_id, attempt: row.attempt };
      let outcome: 'sent' | 'failed';
      try {
        const info = await mailer.send({ to: row.recipients, subject: row.subject, text: row.text_body, html: row.html_body });
        const note = info.rejected.length > 0 ? `sent, but the server refused: ${info.rejected.join(', ')}` : null;
        await client.query(`update l2flow.email_outbox set status = 'sent', sent_at = clock_timestamp(), tries = tries + 1,
          last_error = $2 where id = $1`, [row.id, note]);
        if (note) log.warn({ ...about, rejected: info.rejected }, 'failure mail sent, but some recipients were refused');
        else log.info({ ...about, messageId: info.messageId, tries: row.tries + 1 }, 'failure mail sent');
        outcome = 'sent';
      } catch (err) {
        const tries = row.tries + 1;
        const lastError = errorText(err);
        const dead = tries >= maxTries;
        const delayMs = dead ? 0 : backoff(tries);
        await client.query(`update l2flow.email_outbox set tries = $2, last_error = $3, status = $4,
          next_attempt_at = clock_timestamp() + $5::double precision * interval '1 millisecond' where id = $1`,
          [row.id, tries, lastError, dead ? 'dead' : 'pending', delayMs]);
        const errInfo = { code: (err as { code?: unknown }).code, responseCode: (err as { responseCode?: unknown }).responseCode, message: lastError };
        if (dead) log.error({ ...about, tries, err: errInfo }, `failure mail given up after ${tries} tries: check the SMTP server and the recipients (${mailer.describe()})`);
        else log.warn({ ...about, tries, retryInMs: delayMs, err: errInfo }, 'failure mail not sent; will retry');
        outcome = 'failed';
      }
      await client.query('commit');
      return outcome;
    } catch (err) {
      broken = err;
      await client.query('rollback').catch(() => undefined);
      throw err;
    } finally {
      c.release(broken); // a failed connection is discarded, not returned to the pool
    }
  }

  function drainOnce(): Promise<number> {
    const run = (async () => {
      const tried: string[] = [];
      let sent = 0;
      while (!stopped) {
        const outcome = await deliverOne(tried);
        if (outcome === 'none') return sent;
        if (outcome === 'sent') sent += 1;
      }
      return sent;
    })();
    inFlight.add(run);
    void run.finally(() => inFlight.delete(run)).catch(() => undefined);
    return run;
  }

  async function msUntilNextDue(): Promise<number> {
    const { rows } = await pool.query<{ ms: number | null }>(
      `select (extract(epoch from min(next_attempt_at) - now()) * 1000)::float8 as ms from l2flow.email_outbox where status = 'pending'`);
    const ms = rows[0]?.ms ?? null;
    // A due row we could not claim is being sent by another process: look again soon, not in a hot loop.
    return ms === null ? pollIntervalMs : Math.min(pollIntervalMs, Math.max(ms, Math.min(baseDelayMs, pollIntervalMs)));
  }

  function sleep(ms: number): Promise<void> {
    if (kicked || !running) return Promise.resolve(void (kicked = false));
    return new Promise((resolve) => {
      const timer = setTimeout(() => wake?.(), ms);
      wake = () => {
        clearTimeout(timer);
        wake = undefined;
        resolve();
      };
    });
  }

  async function loop(): Promise<void> {
    let dbDown = false;
    while (running) {
      let waitMs = pollIntervalMs;
      try {
        await drainOnce();
        waitMs = await msUntilNextDue();
        if (dbDown) log.info('email outbox reachable again');
        dbDown = false;
      } catch (err) {
        if (!dbDown) log.warn({ err: { message: (err as Error).message, code: (err as { code?: unknown }).code } }, `email outbox unreachable; retrying every ${pollIntervalMs} ms`);
        dbDown = true;
      }
      await sleep(waitMs);
    }
  }

  return {
    start() {
      if (running) return;
      running = true;
      stopped = false;
      loopDone = loop().catch((err: unknown) => log.error({ err }, 'email dispatcher loop ended unexpectedly'));
    },
    async stop() {
      running = false;
      stopped = true;
      wake?.();
      await loopDone;
      await Promise.allSettled([...inFlight]);
    },
    kick() {
      if (wake) wake();
      else kicked = true; // mid-drain: skip the next sleep instead
    },
    drainOnce,
  };
}

export interface EmailOutboxStatus {
  id: number;
  attempt: number;
  recipients: string[];
  status: 'pending' | 'sent' | 'dead';
  tries: number;
  lastError: string | null;
  nextAttemptAt: Date; createdAt: Date; sentAt: Date | null;
}

/** The failure mails of a run, one per attempt, for `l2flow status`. */
export async function emailOutboxStatus(pool: pg.Pool, runId: string): Promise<EmailOutboxStatus[]> {
  const { rows } = await pool.query<Omit<EmailOutboxStatus, 'id'> & { id: string }>(
    `select id, attempt, recipients, status, tries, last_error as "lastError", next_attempt_at as "nextAttemptAt",
       created_at as "createdAt", sent_at as "sentAt"
     from l2flow.email_outbox where run_id = $1 order by attempt`, [runId]);
  return rows.map((r) => ({ ...r, id: Number(r.id) }));
}
