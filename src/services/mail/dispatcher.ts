import type pg from 'pg';
import { MailError, type Mailer } from './mailer.js';
import { toErrorInfo } from '../../lib/errors.js';
import { backoffDelay, type RetryPolicy } from '../../lib/retry.js';
import { abortableSleep } from '../../lib/time.js';
import { withTransaction } from '../db/index.js';
import type { Logger } from '../types.js';

interface OutboxRow {
  id: string; run_id: string; attempt: number; kind: string; recipients: string[]; subject: string; text_body: string; html_body: string; tries: number;
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
  /** Told about every SMTP send tried (metrics); `dead` is a failure after which the mail is given up. Must not throw. */
  onSend?: (e: { kind: string; outcome: 'sent' | 'failed' | 'dead' }) => void;
}): EmailDispatcher {
  const { pool, mailer, pollIntervalMs = 5000, baseDelayMs = 1000, maxDelayMs = 300_000, maxTries = 100 } = opts;
  const log = opts.logger.child({ module: 'email-dispatcher' });
  let running = false;
  let stopped = false; // ends a drain between two mails
  let loopDone: Promise<void> = Promise.resolve();
  let wake: (() => void) | undefined;
  let kicked = false;
  const inFlight = new Set<Promise<number>>();

  // Per mail, "equal jitter" (never sooner than half): with the defaults try 1 waits 0.5–1 s, try 5 8–16 s, and from
  // try 10 on 150–300 s, until try 100 marks it dead.
  const policy: RetryPolicy = { maxTries, baseDelayMs, maxDelayMs, jitter: 'equal' };

  /** Claim one due row not yet tried in this drain, send it and record the outcome in the same transaction. */
  async function deliverOne(tried: string[]): Promise<'none' | 'sent' | 'failed'> {
    // withTransaction's checkout survives a server restart while a mail is on its way.
    return withTransaction(pool, async (client) => {
      const { rows } = await client.query<OutboxRow>(
        `select id, run_id, attempt, kind, recipients, subject, text_body, html_body, tries from l2flow.email_outbox
         where status = 'pending' and next_attempt_at <= now() and id <> all($1::bigint[])
         order by next_attempt_at, id limit 1 for update skip locked`, [tried]);
      const row = rows[0];
      if (!row) return 'none';
      tried.push(row.id);
      const about = { outboxId: Number(row.id), runId: row.run_id, attempt: row.attempt, kind: row.kind };
      let outcome: 'sent' | 'failed';
      try {
        const info = await mailer.send({ to: row.recipients, subject: row.subject, text: row.text_body, html: row.html_body });
        const note = info.rejected.length > 0 ? `sent, but the server refused: ${info.rejected.join(', ')}` : null;
        await client.query(`update l2flow.email_outbox set status = 'sent', sent_at = clock_timestamp(), tries = tries + 1,
          last_error = $2 where id = $1`, [row.id, note]);
        if (note) log.warn({ ...about, rejected: info.rejected }, `${row.kind} mail sent, but some recipients were refused`);
        else log.info({ ...about, messageId: info.messageId, tries: row.tries + 1 }, `${row.kind} mail sent`);
        outcome = 'sent';
        opts.onSend?.({ kind: row.kind, outcome });
      } catch (err) {
        const tries = row.tries + 1;
        const lastError = (err instanceof MailError ? err.summary : toErrorInfo(err).message).slice(0, 2000);
        const dead = tries >= policy.maxTries;
        const delayMs = dead ? 0 : backoffDelay(policy, tries);
        await client.query(`update l2flow.email_outbox set tries = $2, last_error = $3, status = $4,
          next_attempt_at = clock_timestamp() + $5::double precision * interval '1 millisecond' where id = $1`,
          [row.id, tries, lastError, dead ? 'dead' : 'pending', delayMs]);
        const errInfo = { code: (err as { code?: unknown }).code, responseCode: (err as { responseCode?: unknown }).responseCode, message: lastError };
        if (dead) log.error({ ...about, tries, err: errInfo }, `${row.kind} mail given up after ${tries} tries: check the SMTP server and the recipients (${mailer.describe()})`);
        else log.warn({ ...about, tries, retryInMs: delayMs, err: errInfo }, `${row.kind} mail not sent; will retry`);
        outcome = 'failed';
        opts.onSend?.({ kind: row.kind, outcome: dead ? 'dead' : 'failed' });
      }
      return outcome;
    });
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

  /** Wait for the next poll, cut short by kick() or stop(). */
  async function idle(ms: number): Promise<void> {
    if (kicked || !running) return void (kicked = false);
    const woken = new AbortController();
    wake = () => {
      wake = undefined;
      woken.abort();
    };
    await abortableSleep(ms, woken.signal);
    wake = undefined;
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
      await idle(waitMs);
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

/** The failure mails of a run, one per attempt, for `l2flow status` (late/recovered/blocked notices are not among them). */
export async function emailOutboxStatus(pool: pg.Pool, runId: string): Promise<EmailOutboxStatus[]> {
  const { rows } = await pool.query<Omit<EmailOutboxStatus, 'id'> & { id: string }>(
    `select id, attempt, recipients, status, tries, last_error as "lastError", next_attempt_at as "nextAttemptAt",
       created_at as "createdAt", sent_at as "sentAt"
     from l2flow.email_outbox where run_id = $1 and kind = 'failure' order by attempt`, [runId]);
  return rows.map((r) => ({ ...r, id: Number(r.id) }));
}
