import { describe, expect, it } from 'vitest';
import type { SensorCheck } from '../../src/runtime/app.js';
import { addDays } from '../../src/lib/dates.js';
import { useFixture, FLAG, type Fixture } from '../helpers/app-fixture.js';
import { until } from '../helpers/process.js';

// Run level: the warehouse fails a child, a child overruns its timeout, and the flag sensor meets rows that do or
// do not match. What the run's error, `l2flow status` and the mail say; children.test.ts and sensors.test.ts cover
// the services on their own.

let fx: Fixture;
useFixture((f) => (fx = f));

const REPORTS = 'wf_data_preparation_for_reports';
const SEGMENTATION = 'l1_to_l2_p_load_data_ds_client_segmentation_full';

async function theFailureMail(date: string) {
  await until('the failure mail to be sent', async () => (await fx.status(date)).out.includes('failure mail: sent after 1 try'));
  await new Promise((r) => setTimeout(r, 300));
  expect(fx.mails(date)).toHaveLength(1);
  return fx.mails(date)[0]!;
}

async function stepOf(date: string, step: string) {
  const { rows } = await fx.db.pool.query<{ status: string; started_at: Date; finished_at: Date | null }>(
    `select s.status, s.started_at, s.finished_at from l2flow.step s join l2flow.run r using (run_id) where r.logical_date = $1 and s.step = $2`,
    [date, step]);
  return rows[0];
}

/** Wait until the run of `date` is parked in the flag sensor. */
async function inFlagSensor(date: string) {
  await until('the run to wait for the flag', async () => (await fx.run(date))?.current_step === 'wait_for_l2_full_load');
}

describe('run level: a child statement fails in the warehouse', () => {
  it.each([
    {
      what: "raise exception 'segment table locked' (P0001) in the segmentation child",
      D: '2024-11-01',
      child: SEGMENTATION,
      step: 'load_ds_client_segmentation',
      statement: "do $$ begin raise exception 'segment table locked' using errcode = 'P0001'; end $$",
      says: 'SQLSTATE P0001: segment table locked',
    },
    {
      what: 'a division by zero (22012) in the reports child',
      D: '2024-11-02',
      child: REPORTS,
      step: 'run_wf_data_preparation_for_reports',
      statement: 'select $1::date, 1 / 0',
      says: 'SQLSTATE 22012: division by zero',
    },
  ])('$what: the SQLSTATE and message reach the run error, status and the mail', async ({ D, child, step, statement, says }) => {
    await fx.startApp(D, { file: { children: { [child]: { kind: 'sql', statement } } } });
    await fx.trigger(D, { flag: true });
    const run = await fx.finished(D);
    expect(run.status).toBe('failed');
    expect(run.error_info).toMatchObject({ code: 'CHILD_FAILED', details: { step } });
    expect(run.error).toBe(`${step}: child workflow ${child} failed: ${says}`);
    expect(await stepOf(D, step)).toMatchObject({ status: 'failed' });
    if (child === SEGMENTATION) expect(fx.sapRequests(D)).toHaveLength(0); // SAP comes after segmentation

    const mail = await theFailureMail(D);
    expect(mail.subject).toContain(`${D}: ${step} — CHILD_FAILED: child workflow ${child} failed: SQLSTATE`);
    expect(mail.text).toContain(says);
    expect(mail.html).toContain(says);
    expect((await fx.status(D)).out).toContain(`error: CHILD_FAILED: ${step}: child workflow ${child} failed: ${says}`);
    const json = JSON.parse((await fx.status(D, true)).out);
    expect(json.error).toMatchObject({ code: 'CHILD_FAILED', message: expect.stringContaining(says) });
    expect(json.steps).toContainEqual(expect.objectContaining({ step, status: 'failed', error: expect.objectContaining({ code: 'CHILD_FAILED' }) }));
  });

  it('a child running past its timeout is cancelled on the server and the run fails with CHILD_TIMEOUT', async () => {
    const D = '2024-11-03';
    const running = `select count(*)::int as n from pg_stat_activity where query like 'select pg_sleep(30)%'`;
    await fx.startApp(D, { file: { children: { [REPORTS]: { kind: 'sql', statement: 'select pg_sleep(30), $1::date', timeoutSeconds: 0.5 } } } });
    await fx.trigger(D, { flag: true });
    await until('the child query to run on the server', async () => (await fx.db.pool.query(running)).rows[0].n === 1);
    const seenAt = Date.now();
    const run = await fx.finished(D);
    expect(Date.now() - seenAt).toBeLessThan(3000); // 0.5 s, not the 30 s the statement asked for
    expect(run.status).toBe('failed');
    expect(run.error_info?.code).toBe('CHILD_TIMEOUT');
    expect(run.error).toBe(`run_wf_data_preparation_for_reports: child workflow ${REPORTS} timed out: its query was cancelled on the server after 0.5s`);
    await until('the child backend to be gone', async () => (await fx.db.pool.query(running)).rows[0].n === 0, 2000);

    const mail = await theFailureMail(D);
    expect(mail.subject).toContain('run_wf_data_preparation_for_reports — CHILD_TIMEOUT');
    expect(mail.text).toContain('timed out: its query was cancelled on the server after 0.5s');
    expect((await fx.status(D)).out).toContain('error: CHILD_TIMEOUT: run_wf_data_preparation_for_reports: child workflow');
  });
});

describe('run level: the flag sensor (poke interval 60 s)', () => {
  it('a flag for another date or another flag code is ignored; the right one then ends the wait', async () => {
    const D = '2024-11-10';
    const B = addDays(D, -1);
    await fx.insertFlag(addDays(B, -1)); // the day before: present before the run
    await fx.insertFlag(B, 'l1_to_l2_load_successful'); // one l: another code
    const app = await fx.startApp(D);
    const checks: SensorCheck[] = [];
    app.sensorChecks$.subscribe((c) => checks.push(c));
    await fx.trigger(D);
    await inFlagSensor(D);
    await fx.insertFlag(D); // a later date, through NOTIFY
    await fx.insertFlag(B, 'l0_to_l1_load_successfull');
    await new Promise((r) => setTimeout(r, 1000));
    expect(await fx.run(D)).toMatchObject({ status: 'running', current_step: 'wait_for_l2_full_load', load_id: null });
    expect(await stepOf(D, 'wait_for_l2_full_load')).toMatchObject({ status: 'running', finished_at: null });
    expect((await fx.status(D)).out).toContain('current step: wait_for_l2_full_load');

    const flaggedAt = Date.now();
    await fx.insertFlag(B);
    expect(await fx.finished(D)).toMatchObject({ status: 'success', error: null });
    expect(Date.now() - flaggedAt).toBeLessThan(5000);
    // app.sensorChecks$: the registration check found nothing, the last one found the flag (none failed).
    const flagChecks = checks.filter((c) => c.sensor === 'wait_for_l2_full_load');
    expect(flagChecks[0]).toMatchObject({ reason: 'register', keys: [B], satisfied: [], ok: true });
    expect(flagChecks.at(-1)).toMatchObject({ keys: [B], satisfied: [B], ok: true });
    expect(flagChecks.every((c) => c.ok && c.finishedAt >= c.startedAt)).toBe(true);
  });

  it('a flag that arrives by UPDATE is seen', async () => {
    const D = '2024-11-20';
    const B = addDays(D, -1);
    await fx.insertFlag('2024-01-01');
    await fx.startApp(D);
    await fx.trigger(D);
    await inFlagSensor(D);
    await new Promise((r) => setTimeout(r, 200));
    expect((await fx.run(D))?.current_step).toBe('wait_for_l2_full_load');
    const flaggedAt = Date.now();
    await fx.db.pool.query(`update md.dwh_flag set bussines_date = $1 where flag_cd = $2 and bussines_date = '2024-01-01'`, [B, FLAG]);
    await until('the run to leave the sensor', async () => (await stepOf(D, 'wait_for_l2_full_load'))?.status === 'success', 3000);
    expect(Date.now() - flaggedAt).toBeLessThan(2000);
    expect(await fx.finished(D)).toMatchObject({ status: 'success', error: null });
  });

  it('a flag present before the run began is seen at once', async () => {
    const D = '2024-11-25';
    await fx.insertFlag(addDays(D, -1));
    await fx.startApp(D);
    await fx.trigger(D);
    expect(await fx.finished(D)).toMatchObject({ status: 'success', error: null });
    const step = (await stepOf(D, 'wait_for_l2_full_load'))!;
    expect(step.status).toBe('success');
    expect(step.finished_at!.getTime() - step.started_at.getTime()).toBeLessThan(30_000); // its first check, long before the 60 s poke
  });
});
