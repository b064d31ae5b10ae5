import { userInfo } from 'node:os';
import { describe, expect, it } from 'vitest';
import { useFixture, WF, type Fixture } from '../helpers/app-fixture.js';
import { runMain, until } from '../helpers/process.js';

// clear, mark and the audit trail through the CLI, against the whole runtime with a real SAP HTTP server.

let fx: Fixture;
useFixture((f) => (fx = f));

const ME = userInfo().username;
const cli = (...argv: string[]) => runMain(argv, { L2FLOW_CONN_DWH: fx.dwhUri });

async function runRow(date: string) {
  return (await fx.db.pool.query<{ status: string; attempt: number; load_id: string; run_id: string }>(
    `select status, attempt, load_id::text, run_id from l2flow.run where logical_date = $1`, [date])).rows[0]!;
}
async function stepRows(date: string) {
  return (await fx.db.pool.query<{ attempt: number; step: string; status: string }>(
    `select s.attempt, s.step, s.status from l2flow.step s join l2flow.run r using (run_id) where r.logical_date = $1
      order by s.attempt, s.started_at, s.step`, [date])).rows;
}
async function audit(date: string) {
  return (await fx.db.pool.query<{ action: string; actor: string; reason: string | null; run_ids: string[] }>(
    `select action, actor, reason, run_ids from l2flow.audit where logical_dates @> array[$1::date] order by id`, [date])).rows;
}
/** Wait until the run of `date` is at `attempt` and finished. */
const finishedAttempt = (date: string, attempt: number) =>
  until(`attempt ${attempt} of ${date} to end`, async () => {
    const r = await runRow(date);
    return r.attempt === attempt && (r.status === 'success' || r.status === 'failed') ? r : null;
  }, 20_000);

describe('clear', () => {
  it('a run failed at send_flg_to_sap: --dry-run changes nothing; clear re-runs the failed step as attempt 2 with a new Idempotency-Key', async () => {
    const D = '2024-11-01';
    // SAP refuses only once the reports branch has succeeded: then only the failed branch re-runs.
    const reportsDone = () =>
      until('the reports branch to succeed', async () => (await stepRows(D)).some((s) => s.step === 'run_wf_data_preparation_for_reports' && s.status === 'success'));
    fx.answer((res, n) =>
      n === 1 ? void reportsDone().then(() => res.writeHead(400).end('{"error":"not today"}')) : res.writeHead(200).end('{"ok":true}'),
    );
    await fx.startApp(D, { file: { sap: { timeoutSeconds: 20 } } });
    await fx.trigger(D, { flag: true });
    const failed = await fx.finished(D);
    expect(failed).toMatchObject({ status: 'failed' });
    const before = await stepRows(D);

    const dry = await cli('clear', '--date', D, '--dry-run');
    expect(dry).toMatchObject({ code: 0 });
    expect(dry.out).toContain(`would clear manual__${D} (failed): attempt 2 from send_flg_to_sap; re-runs send_flg_to_sap, end`);
    expect(dry.out).toContain('dry run: nothing was changed');
    expect(await runRow(D)).toMatchObject({ status: 'failed', attempt: 1 });
    expect((await audit(D)).map((a) => a.action)).toEqual(['trigger']);

    const r = await cli('clear', '--date', D, '--reason', 'SAP fixed its calendar');
    expect(r, r.err).toMatchObject({ code: 0 });
    const after = await finishedAttempt(D, 2);
    expect(after).toMatchObject({ status: 'success', load_id: failed.load_id });

    const keys = fx.sapRequests(D).map((q) => q.headers['idempotency-key']);
    expect(keys).toEqual([`${WF}:${D}:${failed.load_id}:1`, `${WF}:${D}:${failed.load_id}:2`]);
    const rows = await stepRows(D);
    // Attempt 1's rows stay as they were; attempt 2 ran only the failed step and end.
    expect(rows.filter((s) => s.attempt === 1)).toEqual(before);
    expect(rows.filter((s) => s.attempt === 2).map((s) => [s.step, s.status])).toEqual([['send_flg_to_sap', 'success'], ['end', 'success']]);
    expect(await audit(D)).toEqual([
      { action: 'trigger', actor: ME, reason: null, run_ids: [`manual__${D}`] },
      { action: 'clear', actor: ME, reason: 'SAP fixed its calendar', run_ids: [`manual__${D}`] },
    ]);
    const status = await fx.status(D);
    expect(status.out).toContain('attempt 2:');
    expect(status.out).toMatch(new RegExp(`audit: .* clear \\(1 run\\) by ${ME}: SAP fixed its calendar`));
    // The grid shows each step's latest outcome in any attempt: the steps attempt 2 did not re-run keep their success.
    const grid = JSON.parse((await fx.status(undefined, true)).out) as { logical_date: string; steps: Record<string, string> }[];
    expect(grid.find((r) => r.logical_date === D)!.steps).toMatchObject({ get_load_id: 'success', load_ds_client_segmentation: 'success', send_flg_to_sap: 'success', end: 'success' });
  });

  it('--to clears a range from a given step; each run keeps its load id', async () => {
    const [D1, D2] = ['2024-11-05', '2024-11-06'];
    await fx.startApp(D1);
    await fx.trigger(D1, { flag: true });
    await fx.finished(D1);
    await fx.trigger(D2, { flag: true });
    await fx.finished(D2);
    const ids = [(await runRow(D1)).load_id, (await runRow(D2)).load_id];

    const r = await cli('clear', '--date', D1, '--to', D2, '--from-step', 'end');
    expect(r, r.err).toMatchObject({ code: 0 });
    expect(r.out.split('\n')).toHaveLength(2);
    for (const [i, d] of [D1, D2].entries()) {
      expect(await finishedAttempt(d, 2)).toMatchObject({ status: 'success', load_id: ids[i] });
      expect((await stepRows(d)).filter((s) => s.attempt === 2).map((s) => s.step)).toEqual(['end']);
    }
    const [entry] = (await audit(D1)).filter((a) => a.action === 'clear');
    expect(entry!.run_ids).toEqual([`manual__${D1}`, `manual__${D2}`]);
  });

  it('refuses a running run, an unknown step (listing the valid ones) and a date without a run, with exit codes 1 and 2', async () => {
    const D = '2024-11-10';
    await fx.startApp(D);
    await fx.trigger(D); // no flag: it waits in wait_for_l2_full_load
    await until('the run to be running', async () => (await runRow(D)).status === 'running');
    const running = await cli('clear', '--date', D);
    expect(running.code).toBe(1);
    expect(running.err).toContain(`${D} is running: a clear re-runs finished runs only`);
    const unknown = await cli('clear', '--date', D, '--from-step', 'send_to_sap');
    expect(unknown.code).toBe(2);
    expect(unknown.err).toContain('"send_to_sap" is not a step that can be cleared: write one of wait_for_l2_full_load, get_load_id');
    const none = await cli('clear', '--date', '2024-01-01');
    expect(none.code).toBe(1);
    expect(none.err).toContain('no runs for 2024-01-01');
    expect((await cli('clear', '--date', '2024-13-01')).code).toBe(2);
    expect((await cli('mark', '--date', D)).code).toBe(2);
    expect(await runRow(D)).toMatchObject({ status: 'running', attempt: 1 });
  });
});

describe('mark', () => {
  it('--success of a failed run; --failed of a running run stops it; cancel is audited too', async () => {
    const D = '2024-11-15';
    fx.answer((res) => res.writeHead(400).end('{"error":"no"}'));
    const app = await fx.startApp(D);
    await fx.trigger(D, { flag: true });
    expect(await fx.finished(D)).toMatchObject({ status: 'failed' });
    const m = await cli('mark', '--date', D, '--success', '--reason', 'sent by hand');
    expect(m, m.err).toMatchObject({ code: 0, out: `marked manual__${D} success (was failed)` });
    expect(await runRow(D)).toMatchObject({ status: 'success' });
    expect((await cli('mark', '--date', D, '--success')).code).toBe(1);

    const R = '2024-11-16';
    await fx.trigger(R);
    await until('the run to be running here', async () => app.supervisor.activeRunIds().includes(`manual__${R}`));
    expect((await cli('mark', '--date', R, '--failed', '--reason', 'not needed'))).toMatchObject({ code: 0 });
    await until('the run to be released here', async () => !app.supervisor.activeRunIds().includes(`manual__${R}`), 10_000);
    expect(await fx.run(R)).toMatchObject({ status: 'failed', error_info: { code: 'MARKED_FAILED' } });

    const C = '2024-11-17';
    await fx.trigger(C);
    expect((await cli('cancel', '--date', C)).code).toBe(0);
    expect((await audit(D)).map((a) => [a.action, a.actor, a.reason])).toEqual([['trigger', ME, null], ['mark', ME, 'sent by hand']]);
    expect((await audit(R)).map((a) => a.action)).toEqual(['trigger', 'mark']);
    expect((await audit(C)).map((a) => [a.action, a.actor])).toEqual([['trigger', ME], ['cancel', ME]]);
    expect((await fx.status(D)).out).toMatch(new RegExp(`audit: .* mark success by ${ME}: sent by hand`));
  });
});
