import { describe, expect, it } from 'vitest';
import { useFixture, SECRETS, SMTP_USER, type Fixture } from '../helpers/app-fixture.js';
import { until } from '../helpers/process.js';

// Run level: a failed run while the SMTP server misbehaves. The run is failed at once, the mail is retried with
// backoff and its state shows in `l2flow status`, nothing crashes, and once the server behaves the mail goes out
// exactly once. The dispatcher's own bookkeeping is covered in failure-email.test.ts.

let fx: Fixture;
useFixture((f) => (fx = f));

interface Outbox { status: string; tries: number; last_error: string | null }

async function outbox(date: string): Promise<Outbox | undefined> {
  const { rows } = await fx.db.pool.query<Outbox>(
    `select o.status, o.tries, o.last_error from l2flow.email_outbox o join l2flow.run r using (run_id) where r.logical_date = $1`, [date]);
  expect(rows.length).toBeLessThanOrEqual(1);
  return rows[0];
}

/** Make the run of `date` fail (SAP refuses the flag with 400) and return once it is failed. */
async function failedRun(date: string) {
  fx.answer((res) => res.writeHead(400).end('{"error":"rejected"}'));
  await fx.startApp(date);
  const triggered = Date.now();
  await fx.trigger(date, { flag: true });
  const run = await fx.finished(date);
  expect(run.status).toBe('failed');
  expect(run.error_info?.code).toBe('SAP_HTTP_ERROR');
  return { run, failedAfterMs: Date.now() - triggered };
}

/** The server behaves again: the mail arrives, and no second copy follows. */
async function deliveredOnce(date: string, triesBefore: number) {
  await until('the failure mail to arrive', async () => fx.mails(date).length > 0, 10_000);
  await until('the outbox to record it', async () => (await outbox(date))?.status === 'sent');
  await new Promise((r) => setTimeout(r, 500));
  expect(fx.mails(date)).toHaveLength(1);
  const row = (await outbox(date))!;
  expect(row.tries).toBeGreaterThan(triesBefore);
  expect((await fx.status(date)).out).toContain(`failure mail: sent after ${row.tries} tries`);
  const mail = fx.mails(date)[0]!;
  expect(mail.subject).toContain('send_flg_to_sap');
  expect(mail.user).toBe(SMTP_USER);
  return mail;
}

/** Log lines of the dispatcher's failed tries: each delay is the configured backoff (50 ms doubling, equal jitter) and was waited. */
function expectBackoff(date: string) {
  const tries = fx.lines.map((l) => JSON.parse(l) as { msg: string; runId: string; tries: number; retryInMs: number; time: number })
    .filter((l) => l.msg === 'failure mail not sent; will retry' && l.runId === `manual__${date}`);
  expect(tries.length).toBeGreaterThanOrEqual(3);
  for (const [i, t] of tries.entries()) {
    const full = 50 * 2 ** (t.tries - 1);
    expect(t.retryInMs).toBeGreaterThanOrEqual(full / 2 - 1);
    expect(t.retryInMs).toBeLessThanOrEqual(full + 1);
    const next = tries[i + 1];
    if (next) expect(next.time - t.time).toBeGreaterThanOrEqual(t.retryInMs - 20); // logged just before the commit
  }
}

describe('run level: the SMTP server', () => {
  it('down: the run fails at once, the mail is retried with backoff and shown pending, then sent once when the server is back', async () => {
    const D = '2024-10-01';
    await fx.smtp.stop();
    const { failedAfterMs } = await failedRun(D);
    expect(failedAfterMs).toBeLessThan(5000);
    expect(await outbox(D)).toMatchObject({ status: 'pending' });

    const pending = await until('a few delivery tries', async () => {
      const row = await outbox(D);
      return row && row.tries >= 4 ? row : null;
    });
    expect(pending.last_error).toContain('ECONNREFUSED');
    const text = (await fx.status(D)).out;
    expect(text).toMatch(/^error: SAP_HTTP_ERROR: send_flg_to_sap: SAP answered 400/m);
    expect(text).toMatch(/failure mail: pending after \d+ tries; last error: .*ECONNREFUSED/);
    const json = JSON.parse((await fx.status(D, true)).out);
    expect(json).toMatchObject({ status: 'failed', failure_email: [{ status: 'pending', lastError: expect.stringContaining('ECONNREFUSED') }] });
    expect(json.failure_email[0].tries).toBeGreaterThanOrEqual(4);
    expectBackoff(D);

    await fx.smtp.restart();
    await deliveredOnce(D, pending.tries);
    expect(fx.escaped).toEqual([]);
  });

  it('rejecting the recipients (550): retried and shown with the 550, sent once the server accepts them', async () => {
    const D = '2024-10-02';
    fx.smtp.set({ rejectRecipients: true, rejectCode: 550 });
    const { failedAfterMs } = await failedRun(D);
    expect(failedAfterMs).toBeLessThan(5000);
    const pending = await until('two delivery tries', async () => {
      const row = await outbox(D);
      return row && row.tries >= 2 ? row : null;
    });
    expect(pending).toMatchObject({ status: 'pending', last_error: expect.stringMatching(/EENVELOPE 550: .*recipients were rejected/) });
    expect((await fx.status(D)).out).toMatch(/failure mail: pending after \d+ tries; last error: EENVELOPE 550: .*Mailbox <[^>]+@bank\.example> unavailable/);
    expect(fx.mails(D)).toHaveLength(0);

    fx.smtp.set({ rejectRecipients: false });
    const mail = await deliveredOnce(D, pending.tries);
    expect(mail.envelopeTo.sort()).toEqual(['dwh-team@bank.example', 'oncall@bank.example']);
  });

  it('rejecting the login (535): retried and shown as EAUTH without the password, sent once the login works', async () => {
    const D = '2024-10-03';
    fx.smtp.set({ password: 'the-server-wants-another-one' });
    await failedRun(D);
    const pending = await until('two delivery tries', async () => {
      const row = await outbox(D);
      return row && row.tries >= 2 ? row : null;
    });
    expect(pending).toMatchObject({ status: 'pending', last_error: expect.stringMatching(/^EAUTH 535: Invalid login/) });
    expect((await fx.status(D)).out).toMatch(/failure mail: pending after \d+ tries; last error: EAUTH 535: Invalid login: 535 Authentication credentials invalid/);
    expect(fx.smtp.authAttempts.filter((a) => !a.ok).length).toBeGreaterThanOrEqual(2);

    fx.smtp.set({ password: SECRETS.smtp }); // the server takes our password again (assertNoSecrets: it showed nowhere)
    await deliveredOnce(D, pending.tries);
  });

  it('accepting slowly: the run is failed before the server answers, and the slow mail is sent once, not again', async () => {
    const D = '2024-10-04';
    fx.smtp.set({ acceptDelayMs: 1500 });
    const dataBefore = fx.smtp.dataStarted;
    await failedRun(D);
    const failedSeenAt = Date.now();
    // The run's record is final while the server still holds the mail.
    await until('the mail to be in transfer', async () => fx.smtp.dataStarted > dataBefore);
    expect(fx.mails(D)).toHaveLength(0);
    expect((await fx.run(D))?.status).toBe('failed');
    expect((await fx.status(D)).out).toContain('failure mail: pending after 0 tries');

    await until('the failure mail to arrive', async () => fx.mails(D).length > 0, 10_000);
    expect(Date.now() - failedSeenAt).toBeGreaterThan(1000);
    await until('the outbox to record it', async () => (await outbox(D))?.status === 'sent');
    await new Promise((r) => setTimeout(r, 500));
    expect(fx.mails(D)).toHaveLength(1);
    expect(await outbox(D)).toMatchObject({ status: 'sent', tries: 1, last_error: null });
    expect((await fx.status(D)).out).toContain('failure mail: sent after 1 try');
  });
});
