import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import pg from 'pg';
import pino from 'pino';
import { createTestDb, type TestDb } from '../helpers/db.js';
import { startSmtpServer, type TestSmtpServer } from '../helpers/smtp.js';
import { createMailer, parseSmtpConnection, type Mailer } from '../../src/services/mail/index.js';
import {
  createEmailDispatcher, createFailureNotifier, emailOutboxStatus, renderFailureEmail, type EmailDispatcher,
} from '../../src/services/mail/index.js';
import type { RunFailure, StepContext } from '../../src/services/types.js';

const WF = 'WF_MAIN_DATASETS_LOAD_L2_TO_L2';
const signal = new AbortController().signal;
const RECIPIENTS = ['dwh-ops@bank.test', 'oncall@bank.test'];
const failure: RunFailure = { step: 'send_flg_to_sap', code: 'SAP_HTTP_ERROR', message: 'SAP answered 503 <html>"busy" & retry</html>' };

function ctx(runId: string, loadId: number | null = 42): StepContext & { failure: RunFailure } {
  return { runId, workflowId: WF, logicalDate: '2024-05-02', businessDate: '2024-05-01', attempt: 1, loadId, failure };
}

function captureLogs() {
  const lines: string[] = [];
  const logger = pino({ level: 'debug' }, { write: (s: string) => void lines.push(s) });
  const entries = () => lines.map((l) => JSON.parse(l) as { level: number; msg: string; [k: string]: unknown });
  return { logger, lines, entries };
}

async function waitUntil(what: string, check: () => Promise<boolean> | boolean, timeoutMs = 10_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`timed out waiting until ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe('parseSmtpConnection', () => {
  it('reads Airflow-style smtp:// and smtps:// URIs', () => {
    const c = parseSmtpConnection('smtp://l2flow%40bank:p%40ss%2Fw@mail.bank.test:2525?from=l2flow@bank.test&starttls=true');
    expect(c).toEqual({
      transport: { host: 'mail.bank.test', port: 2525, secure: false, requireTLS: true, auth: { user: 'l2flow@bank', pass: 'p@ss/w' } },
      from: 'l2flow@bank.test',
    });
    expect(parseSmtpConnection('smtps://u:p@mail.bank.test').transport).toMatchObject({ port: 465, secure: true });
    expect(parseSmtpConnection('smtp://mail.bank.test?disable_tls=true&timeout=5&retry_limit=3&from_email=a@b.test')).toEqual({
      transport: { host: 'mail.bank.test', port: 587, secure: false, ignoreTLS: true, connectionTimeout: 5000 }, from: 'a@b.test',
    });
    const extra = encodeURIComponent(JSON.stringify({ from_email: 'x@b.test', disable_ssl: false }));
    expect(parseSmtpConnection(`smtp://mail.bank.test?__extra__=${extra}`)).toEqual({
      transport: { host: 'mail.bank.test', port: 465, secure: true }, from: 'x@b.test',
    });
  });

  it.each([
    ['not a url hunter2secret', /not a valid URL/],
    ['http://u:hunter2secret@mail.bank.test', /scheme "http:"/],
    ['smtp://u:hunter2secret@mail.bank.test/path', /path/],
    ['smtp://u:hunter2secret@mail.bank.test?bogus=hunter2secret', /unknown option \?bogus/],
    ['smtp://u:hunter2secret%E0%A4@mail.bank.test', /password is not valid percent-encoding/],
    ['smtp://u:hunter2secret@mail.bank.test?secure=maybe', /secure= must be true or false/],
  ])('rejects %#, naming what to fix without the password', (uri, why) => {
    let msg = '';
    try {
      parseSmtpConnection(uri);
    } catch (err) {
      msg = (err as Error).message;
    }
    expect(msg).toMatch(why);
    expect(msg).not.toContain('hunter2');
  });
});

describe('renderFailureEmail', () => {
  it('names workflow, date, step, error and load id in subject, text and HTML, escaping the HTML', () => {
    const mail = renderFailureEmail({ ...ctx('r-1'), loadId: 42 });
    for (const part of [mail.subject, mail.text, mail.html]) {
      for (const s of [WF, '2024-05-02', 'send_flg_to_sap', 'SAP_HTTP_ERROR', 'load id', '42']) expect(part.toLowerCase()).toContain(s.toLowerCase());
    }
    expect(mail.subject).toContain(failure.message);
    expect(mail.text).toContain(failure.message);
    expect(mail.text).toContain('l2flow status --date 2024-05-02');
    expect(mail.html).toContain('SAP answered 503 &lt;html&gt;&quot;busy&quot; &amp; retry&lt;/html&gt;');
    expect(mail.html).not.toContain('<html>"busy"');
    expect(mail.html).toContain('<code>l2flow status --date 2024-05-02</code>');
  });

  it('says "not assigned" when the run failed before get_load_id, and escapes every field', () => {
    const mail = renderFailureEmail({ ...ctx('r-<2>'), loadId: null, failure: { step: 'wait_for_l2_full_load', code: 'SENSOR_TIMEOUT', message: 'no flag' } });
    for (const part of [mail.subject, mail.text, mail.html]) expect(part).toContain('not assigned');
    expect(mail.text).toContain('md.dwh_flag');
    expect(mail.html).toContain('r-&lt;2&gt;');
    expect(mail.html).not.toContain('r-<2>');
  });
});

describe('failure mail outbox and dispatcher (real PostgreSQL and SMTP)', () => {
  let db: TestDb;
  let smtp: TestSmtpServer;
  let logs: ReturnType<typeof captureLogs>;
  const cleanups: Array<() => Promise<void> | void> = [];

  beforeEach(async () => {
    [db, smtp] = await Promise.all([createTestDb(), startSmtpServer()]);
    // db.drop() ends the pool and at once force-drops the database: a backend killed (57P01) before its client has
    // closed is reported through the pool's 'error' event, which would otherwise be an unhandled error.
    db.pool.on('error', () => undefined);
    logs = captureLogs();
  });
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
    await smtp.close();
    await db.drop();
  });

  function mailer(uri = smtp.uri()): Mailer {
    const m = createMailer({ smtpUri: uri, from: 'l2flow@bank.test', logger: logs.logger, connectionTimeoutMs: 2000, socketTimeoutMs: 5000 });
    cleanups.push(() => m.close());
    return m;
  }
  function dispatcher(opts: { pool?: pg.Pool; mailer?: Mailer; maxTries?: number; baseDelayMs?: number } = {}): EmailDispatcher {
    const d = createEmailDispatcher({
      pool: opts.pool ?? db.pool, mailer: opts.mailer ?? mailer(), logger: logs.logger,
      pollIntervalMs: 100, baseDelayMs: opts.baseDelayMs ?? 20, maxDelayMs: 1000, maxTries: opts.maxTries ?? 100,
    });
    cleanups.push(() => d.stop());
    return d;
  }
  const notifier = (onQueued?: (id: number) => void) =>
    createFailureNotifier({ pool: db.pool, recipients: RECIPIENTS, logger: logs.logger, ...(onQueued ? { onQueued } : {}) });
  const status = async (runId: string) => {
    const rows = await emailOutboxStatus(db.pool, runId);
    expect(rows).toHaveLength(1);
    return rows[0]!;
  };

  it('queues one mail however often the step is re-invoked, and delivers it once with the rendered content', async () => {
    const notify = notifier();
    const d = dispatcher();
    const first = await notify(ctx('r-once'), signal);
    const again = await Promise.all([notify(ctx('r-once'), signal), notify(ctx('r-once'), signal)]);
    expect(again.map((r) => r.outboxId)).toEqual([first.outboxId, first.outboxId]);

    expect(await d.drainOnce()).toBe(1);
    expect(await d.drainOnce()).toBe(0);
    await notify(ctx('r-once'), signal); // a run resumed after the mail went out
    expect(await d.drainOnce()).toBe(0);

    expect(smtp.messages).toHaveLength(1);
    const got = smtp.messages[0]!;
    expect(got.envelopeTo).toEqual(RECIPIENTS);
    expect(got.envelopeFrom).toBe('l2flow@bank.test');
    const expected = renderFailureEmail(ctx('r-once'));
    expect(got.subject).toBe(expected.subject);
    expect(got.text.trim()).toBe(expected.text.trim());
    expect(got.html).toContain('&lt;html&gt;&quot;busy&quot;');
    const row = await status('r-once');
    expect(row).toMatchObject({ id: first.outboxId, attempt: 1, status: 'sent', tries: 1, lastError: null });
    expect(row.sentAt).toBeInstanceOf(Date);
  });

  it('keeps the mail pending while the server is down and delivers it exactly once when it is back', async () => {
    const d = dispatcher();
    await smtp.stop();
    await notifier()(ctx('r-down'), signal);

    expect(await d.drainOnce()).toBe(0);
    const down = await status('r-down');
    expect(down).toMatchObject({ status: 'pending', tries: 1 });
    expect(down.lastError).toMatch(/ECONNREFUSED/);
    expect(down.nextAttemptAt.getTime()).toBeGreaterThan(Date.now() - 1000);
    const warns = logs.entries().filter((e) => e.level === 40 && e.msg.includes('will retry'));
    expect(warns).toHaveLength(1);
    expect(warns[0]).toMatchObject({ runId: 'r-down', tries: 1, err: { code: 'ESOCKET' } });

    await smtp.restart();
    d.start();
    await smtp.waitForMessages(1);
    await waitUntil('the row is marked sent', async () => (await status('r-down')).status === 'sent');
    await new Promise((r) => setTimeout(r, 200));
    expect(smtp.messages).toHaveLength(1);
    expect((await status('r-down')).tries).toBeGreaterThanOrEqual(2);
  });

  it('retries a refused recipient with growing delays, records the 5xx, and gives up after maxTries', async () => {
    smtp.set({ rejectRecipients: true });
    const d = dispatcher({ maxTries: 4, baseDelayMs: 40 });
    await createFailureNotifier({ pool: db.pool, recipients: ['gone@bank.test'], logger: logs.logger, onQueued: () => d.kick() })(ctx('r-550'), signal);
    d.start();
    await waitUntil('the mail is given up', async () => (await status('r-550')).status === 'dead');
    await new Promise((r) => setTimeout(r, 200));

    const row = await status('r-550');
    expect(row).toMatchObject({ status: 'dead', tries: 4, sentAt: null });
    expect(row.lastError).toMatch(/EENVELOPE 550: .*Mailbox <gone@bank\.test> unavailable/);
    const at = smtp.rcptAttempts.map((a) => a.at);
    expect(at).toHaveLength(4);
    // Equal jitter: the k-th retry waits at least half of base * 2^(k-1).
    for (let k = 1; k < at.length; k++) expect(at[k]! - at[k - 1]!).toBeGreaterThanOrEqual(20 * 2 ** (k - 1) - 2);
    const entries = logs.entries();
    expect(entries.filter((e) => e.level === 40 && e.msg.includes('will retry'))).toHaveLength(3);
    expect(entries.filter((e) => e.level === 50 && e.msg.includes('given up after 4 tries'))).toHaveLength(1);
    expect(smtp.messages).toHaveLength(0);
  });

  it('counts a mail refused for some recipients only as sent and records who was refused', async () => {
    smtp.set({ rejectRecipients: ['oncall@bank.test'] });
    const d = dispatcher();
    await notifier()(ctx('r-partial'), signal);
    expect(await d.drainOnce()).toBe(1);
    expect(smtp.messages[0]!.envelopeTo).toEqual(['dwh-ops@bank.test']);
    expect(await status('r-partial')).toMatchObject({ status: 'sent', lastError: expect.stringContaining('oncall@bank.test') });
  });

  it('records a login failure without the password anywhere in the row, the error or the logs', async () => {
    const password = 'S3cr3t-p@ss:w/rd';
    smtp.set({ user: 'l2flow', password: 'the-right-one' });
    const m = mailer(smtp.uri('l2flow', password));
    expect(m.describe()).toBe(`smtp://l2flow@127.0.0.1:${smtp.port} (STARTTLS if offered), from l2flow@bank.test`);
    await notifier()(ctx('r-auth'), signal);
    expect(await dispatcher({ mailer: m }).drainOnce()).toBe(0);

    const row = await status('r-auth');
    expect(row).toMatchObject({ status: 'pending', tries: 1 });
    expect(row.lastError).toMatch(/^EAUTH 535: Invalid login: 535/);
    expect(smtp.authAttempts).toEqual([{ username: 'l2flow', ok: false }]);
    const direct = await m.send({ to: ['x@bank.test'], subject: 's', text: 't', html: 'h' }).catch((e: unknown) => e);
    expect(direct).toMatchObject({ name: 'MailError', code: 'EAUTH', responseCode: 535, permanent: true });

    const b64 = (s: string) => Buffer.from(s).toString('base64');
    const haystack = [row.lastError, (direct as Error).message, JSON.stringify(direct), m.describe(), ...logs.lines].join('\n');
    for (const secret of [password, encodeURIComponent(password), b64(password), b64(`\0l2flow\0${password}`)]) {
      expect(haystack).not.toContain(secret);
    }

    const ok = mailer(smtp.uri('l2flow', 'the-right-one'));
    await db.pool.query('update l2flow.email_outbox set next_attempt_at = now()');
    expect(await dispatcher({ mailer: ok }).drainOnce()).toBe(1);
    expect(smtp.messages[0]!.user).toBe('l2flow');
  });

  it('delivers each mail once when two dispatchers share the database', async () => {
    smtp.set({ acceptDelayMs: 30 });
    const runs = ['r-a', 'r-b', 'r-c', 'r-d', 'r-e', 'r-f'];
    for (const r of runs) await notifier()(ctx(r), signal);
    const pools = [0, 1].map(() => new pg.Pool({ connectionString: db.uri, max: 2 }).on('error', () => undefined));
    cleanups.push(() => Promise.all(pools.map((p) => p.end())).then(() => undefined));
    const [a, b] = pools.map((pool) => dispatcher({ pool }));

    const sent = await Promise.all([a!.drainOnce(), b!.drainOnce()]);
    expect(sent[0]! + sent[1]!).toBe(runs.length);
    a!.start();
    b!.start();
    await new Promise((r) => setTimeout(r, 300));
    const delivered = smtp.messages.map((m) => /^Run:\s+(\S+)/m.exec(m.text)?.[1]);
    expect(delivered.sort()).toEqual(runs);
    const { rows } = await db.pool.query<{ n: number }>(`select count(*)::int as n from l2flow.email_outbox where status = 'sent' and tries = 1`);
    expect(rows[0]!.n).toBe(runs.length);
  });

  it('stop() waits for the delivery in flight to be recorded and sends nothing after it', async () => {
    smtp.set({ acceptDelayMs: 300 });
    const d = dispatcher();
    d.start();
    const notify = createFailureNotifier({ pool: db.pool, recipients: RECIPIENTS, logger: logs.logger, onQueued: () => d.kick() });
    await notify(ctx('r-stop-1'), signal);
    await notify(ctx('r-stop-2'), signal);
    await waitUntil('the server receives a mail', () => smtp.dataStarted === 1);
    await d.stop();
    const rows = await db.pool.query<{ status: string; tries: number }>('select status, tries from l2flow.email_outbox order by status');
    expect(rows.rows).toEqual([{ status: 'pending', tries: 0 }, { status: 'sent', tries: 1 }]);
    await new Promise((r) => setTimeout(r, 200));
    expect(smtp.dataStarted).toBe(1);
  });

  it('survives an unreachable database: one warning, no crash, stop() returns', async () => {
    const badPool = new pg.Pool({ connectionString: 'postgres://root@127.0.0.1:1/nowhere', connectionTimeoutMillis: 500 });
    cleanups.push(() => badPool.end());
    const d = createEmailDispatcher({ pool: badPool, mailer: mailer(), logger: logs.logger, pollIntervalMs: 20 });
    d.start();
    d.kick();
    await new Promise((r) => setTimeout(r, 200));
    await d.stop();
    const warns = logs.entries().filter((e) => e.level === 40);
    expect(warns).toHaveLength(1);
    expect(warns[0]!.msg).toContain('email outbox unreachable');
  });
});
