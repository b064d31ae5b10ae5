import { describe, expect, it } from 'vitest';
import { addDays, formatInZone } from '../../src/lib/dates.js';
import { FLAG, WF, useFixture, type Fixture } from '../helpers/app-fixture.js';
import { until } from '../helpers/process.js';

/**
 * Expected-by deadlines and the wait_for_success_end policy, through the whole runtime (createApp) against a real
 * PostgreSQL, SMTP server and SAP HTTP server. Dates are far apart per test so runs never see each other.
 */

let fx: Fixture;
useFixture((f) => (fx = f));
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const noticeMails = (kind: 'LATE' | 'RECOVERED' | 'BLOCKED', date: string) =>
  fx.smtp.messages.filter((m) => m.subject.startsWith(`[l2flow] ${kind} ${WF} ${date}: `));
const outbox = async (date: string) =>
  (await fx.db.pool.query<{ kind: string; step: string; status: string }>(
    `select o.kind, o.step, o.status from l2flow.email_outbox o join l2flow.run r using (run_id) where r.logical_date = $1 order by o.id`, [date])).rows;
const inStep = (date: string, step: string) => until(`the run of ${date} to wait in ${step}`, async () => (await fx.run(date))?.current_step === step, 15_000);

/**
 * A deadline `seconds` ahead (whole seconds, as HH:MM:SS writes it) as the date and time it falls on in `timeZone`.
 * Tests use zones 26 h apart (UTC−12, UTC+14), so their logical dates never collide.
 */
function deadlineAhead(seconds: number, timeZone: string): { at: number; date: string; time: string } {
  const at = Math.ceil((Date.now() + seconds * 1000) / 1000) * 1000;
  const [date, time] = formatInZone(at, timeZone).split(' ') as [string, string];
  return { at, date, time };
}

/** A failed run of `date` as a previous day's run would have left it. */
async function failedRun(date: string): Promise<void> {
  await fx.db.pool.query(
    `insert into l2flow.run (run_id, workflow_id, logical_date, business_date, status, started_at, finished_at, error)
     values ($1, $2, $3, $4, 'failed', now() - interval '1 hour', '2025-06-01T21:14:00Z', $5)`,
    [`manual__${date}`, WF, date, addDays(date, -1),
      { code: 'SAP_HTTP_ERROR', message: 'send_flg_to_sap: SAP answered 400 Bad Request', details: { step: 'send_flg_to_sap' } }]);
}

describe('expectedBy: late and recovered mails', () => {
  it('a deadline passing while the run waits for the flag sends one late mail (two replicas, a restart), then one recovered mail', async () => {
    // A deadline ~10 s ahead on the date it falls on: the run is created well before it.
    const timezone = 'Etc/GMT+12';
    const { at: deadline, date, time } = deadlineAhead(10, timezone);
    const businessDate = addDays(date, -1);
    const file = { workflow: { timezone, expectedBy: time } };
    const first = [await fx.startApp(date, { file }), await fx.startApp(date, { file })];
    await fx.trigger(date);
    await inStep(date, 'wait_for_l2_full_load');
    expect(Date.now(), 'the run started before its deadline; the test machine was too slow to prove anything').toBeLessThan(deadline - 1_000);

    // status says what the run waits on, with the last check and the next poll (60 s after the first check).
    const text = await until('status to show the last check', async () => {
      const r = await fx.status(date);
      return /last check \d{4}-/.test(r.out) ? r.out : null;
    });
    // The operator's shell has no config file: times in the default timezone.
    expect(text).toContain(`      waiting for flag '${FLAG}' in md.dwh_flag for business date ${businessDate}; last check 20`);
    expect(text).toMatch(/next poll by \d{4}-\d\d-\d\d \d\d:\d\d:\d\d \(Asia\/Tashkent\)/);
    const json = JSON.parse((await fx.status(date, true)).out) as { waiting_on: Record<string, string> };
    expect(json.waiting_on).toMatchObject({ step: 'wait_for_l2_full_load', flagCode: FLAG, businessDate, lastCheckOk: true });
    expect(Date.parse(json.waiting_on.nextPollAt!) - Date.parse(json.waiting_on.lastCheckAt!)).toBeGreaterThanOrEqual(59_000);
    expect(noticeMails('LATE', date)).toHaveLength(0);

    await until('the late mail', async () => noticeMails('LATE', date).length > 0, 20_000);
    const [late] = noticeMails('LATE', date);
    expect(late!.receivedAt).toBeGreaterThanOrEqual(deadline);
    expect(late!.subject).toContain('running, in wait_for_l2_full_load');
    expect(late!.text).toContain(`Expected by:`);
    expect(late!.text).toContain(`waiting for flag '${FLAG}' in md.dwh_flag for business date ${businessDate}`);
    expect(late!.html).toContain('wait_for_l2_full_load');
    expect(late!.text).not.toMatch(/failed/i);

    // Ten more rounds of both replicas, then a restart of both: still one late mail.
    await sleep(2_000);
    await Promise.all(first.map((a) => a.stop()));
    await fx.startApp(date, { file });
    await sleep(2_000);
    expect(noticeMails('LATE', date)).toHaveLength(1);
    expect(await outbox(date)).toEqual([{ kind: 'late', step: '', status: 'sent' }]);

    await fx.insertFlag(businessDate);
    expect((await fx.finished(date)).status).toBe('success');
    await until('the recovered mail', async () => noticeMails('RECOVERED', date).length > 0, 10_000);
    await sleep(1_500);
    expect(noticeMails('RECOVERED', date)).toHaveLength(1);
    expect(noticeMails('RECOVERED', date)[0]!.text).toContain('the run succeeded after it was reported late');
    expect((await outbox(date)).map((o) => o.kind)).toEqual(['late', 'recovered']);
  });

  it("a step's own deadline sends one late mail naming the step", async () => {
    const timezone = 'Etc/GMT-14';
    const { date, time } = deadlineAhead(6, timezone);
    await fx.startApp(date, { file: { workflow: { timezone, stepExpectedBy: { wait_for_l2_full_load: time, end: '23:59:59' } } } });
    await fx.trigger(date);
    await inStep(date, 'wait_for_l2_full_load');
    await until('the late mail of the step', async () => noticeMails('LATE', date).length > 0, 15_000);
    await sleep(1_500);
    const mails = noticeMails('LATE', date);
    expect(mails).toHaveLength(1);
    expect(mails[0]!.subject).toContain(`step wait_for_l2_full_load has not succeeded by ${date} ${time} (${timezone})`);
    expect(await outbox(date)).toEqual([{ kind: 'late', step: 'wait_for_l2_full_load', status: 'sent' }]);
  });

  it('a deadline not yet reached, or one that passed before the run was created (a backfill), sends nothing', async () => {
    const date = '2031-03-10';
    await fx.startApp(date, { file: { workflow: { expectedBy: '00:00:01', stepExpectedBy: { end: '23:59' } } } });
    await fx.trigger(date); // created years before 2031-03-10 00:00:01
    const old = '2024-03-10';
    await fx.startApp(old, { file: { workflow: { expectedBy: '00:00:01' } } });
    await fx.trigger(old); // created years after its deadline
    await inStep(date, 'wait_for_l2_full_load');
    await inStep(old, 'wait_for_l2_full_load');
    await sleep(1_500);
    expect([...(await outbox(date)), ...(await outbox(old))]).toEqual([]);
  });
});

describe('wait_for_success_end policy', () => {
  it("whenFailed: wait (default) keeps waiting, status names the blocking date, and one blocked mail goes out after blockedMailAfterSeconds", async () => {
    const date = '2030-06-03';
    const prev = '2030-06-02';
    await failedRun(prev);
    await fx.startApp(date, { env: { L2FLOW_START_DATE: prev }, file: { sensors: { wait_for_success_end: { blockedMailAfterSeconds: 1 } } } });
    await fx.trigger(date, { flag: true });
    await inStep(date, 'wait_for_success_end');
    const status = await until('status to show the last check', async () => {
      const r = await fx.status(date);
      return /last check \d{4}-/.test(r.out) ? r.out : null;
    });
    // 21:14 UTC is 02:14 the next day in Asia/Tashkent, the default timezone.
    expect(status).toContain(`      waiting for ${prev}, failed at send_flg_to_sap 2025-06-02 02:14:00 (SAP_HTTP_ERROR: SAP answered 400 Bad Request)`);
    const json = JSON.parse((await fx.status(date, true)).out) as { waiting_on: Record<string, unknown> };
    expect(json.waiting_on).toMatchObject({
      step: 'wait_for_success_end', previousLogicalDate: prev, previousStatus: 'failed', failedStep: 'send_flg_to_sap',
      failedAt: '2025-06-01T21:14:00.000Z', error: { code: 'SAP_HTTP_ERROR', message: 'SAP answered 400 Bad Request' },
    });

    await until('the blocked mail', async () => noticeMails('BLOCKED', date).length > 0, 15_000);
    const [blocked] = noticeMails('BLOCKED', date);
    const { rows: [step] } = await fx.db.pool.query<{ started_at: Date }>(
      `select s.started_at from l2flow.step s join l2flow.run r using (run_id) where r.logical_date = $1 and s.step = 'wait_for_success_end'`, [date]);
    expect(blocked!.receivedAt - step!.started_at.getTime()).toBeGreaterThanOrEqual(1_000); // after the configured 1 s, not before
    expect(blocked!.text).toContain(`waiting for ${prev}, failed at send_flg_to_sap`);
    expect(blocked!.text).toContain('SAP answered 400 Bad Request');
    await sleep(2_000);
    expect(noticeMails('BLOCKED', date)).toHaveLength(1);
    expect((await fx.run(date))!.status).toBe('running');
  });

  it('whenFailed: fail fails the run at once, naming the blocking date, its step and its error', async () => {
    const date = '2030-07-03';
    const prev = '2030-07-02';
    await failedRun(prev);
    await fx.startApp(date, { env: { L2FLOW_START_DATE: prev }, file: { sensors: { wait_for_success_end: { whenFailed: 'fail' } } } });
    await fx.trigger(date, { flag: true });
    const run = await fx.finished(date);
    expect(run.status).toBe('failed');
    expect(run.error_info).toMatchObject({ code: 'PREVIOUS_RUN_FAILED' });
    expect(run.error).toContain(`wait_for_success_end: wait_for_success_end: the run of ${prev}, failed at send_flg_to_sap`);
    expect(run.error).toContain('SAP_HTTP_ERROR: SAP answered 400 Bad Request');
    await until('the failure mail', async () => fx.mails(date).length > 0);
    expect(fx.mails(date)[0]!.subject).toContain('PREVIOUS_RUN_FAILED');
  });

  it('whenMissing: pass runs on when the previous date has no run at all', async () => {
    const date = '2030-08-03';
    await fx.startApp(date, { env: { L2FLOW_START_DATE: '2030-08-01' }, file: { sensors: { wait_for_success_end: { whenMissing: 'pass' } } } });
    await fx.trigger(date, { flag: true });
    expect((await fx.finished(date)).status).toBe('success');
  });
});

describe('completion flag', () => {
  const flagRows = async (businessDate: string) =>
    (await fx.db.pool.query<{ xmin: string }>(`select xmin::text from md.dwh_flag where flag_cd = 'l2_datasets_load_successful' and bussines_date = $1`, [businessDate])).rows;

  it('is inserted with the end step, in the same transaction as the successful md writes', async () => {
    const date = '2030-09-03';
    await fx.startApp(date, { file: { completionFlag: { enabled: true } } });
    await fx.trigger(date, { flag: true });
    const run = await fx.finished(date);
    expect(run.status).toBe('success');
    const rows = await flagRows(addDays(date, -1));
    expect(rows).toHaveLength(1);
    const { rows: logged } = await fx.db.pool.query<{ xmin: string }>(
      `select xmin::text from md.session_log where load_id = $1 and message like 'successful -> %'`, [run.load_id]);
    expect(logged).toEqual([{ xmin: rows[0]!.xmin }]); // one transaction id: committed together or not at all
  });

  it('is not inserted when the run fails, nor when end itself fails (rolled back with it)', async () => {
    const date = '2030-09-13';
    // whenMissing: pass, so the second run below does not wait for its (missing) previous day.
    const file = { completionFlag: { enabled: true }, sensors: { wait_for_success_end: { whenMissing: 'pass' } } };
    await fx.startApp(date, { file });
    fx.answer((res) => res.writeHead(400, { 'content-type': 'text/plain' }).end('refused'));
    await fx.trigger(date, { flag: true });
    expect((await fx.finished(date)).status).toBe('failed');
    expect(await flagRows(addDays(date, -1))).toEqual([]);

    // end fails after the flag insert (a warehouse trigger refuses the log line): the flag goes with it.
    const other = '2030-09-23';
    await fx.db.pool.query(`create function public.refuse_success_log() returns trigger language plpgsql as $$ begin
      if new.message like 'successful -> %' then raise exception 'session_log is read-only today'; end if; return new; end $$`);
    await fx.db.pool.query(`create trigger refuse_success_log before insert on md.session_log for each row execute function public.refuse_success_log()`);
    try {
      fx.answer((res) => res.writeHead(200).end('{"ok":true}'));
      await fx.trigger(other, { flag: true });
      const run = await fx.finished(other);
      expect(run.status).toBe('failed');
      expect(run.error).toContain('session_log is read-only today');
      expect(await flagRows(addDays(other, -1))).toEqual([]);
    } finally {
      await fx.db.pool.query('drop trigger refuse_success_log on md.session_log');
      await fx.db.pool.query('drop function public.refuse_success_log()');
    }
  });
});
