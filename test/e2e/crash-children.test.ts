import type http from 'node:http';
import pg from 'pg';
import { describe, expect, it } from 'vitest';
import { addDays } from '../../src/lib/dates.js';
import { crashHarness, D, expectRestored, expectSucceededOnce, WF } from '../helpers/crash.js';
import { until } from '../helpers/process.js';

// Crash and resume, part 3: the children and SAP. `l2flow run` is killed with SIGKILL while the step is in flight
// (seen in pg_stat_activity, l2flow.run and the SAP server's request log), then started again.

describe('crash and resume: children and SAP', () => {
  it('run_sys_kill_all_session_pg: killed while its statement waits; the resumed step terminates and records once', async () => {
    // The builtin is ONE statement: it looks for its memo, terminates the stale sessions unless the memo exists, and
    // records the memo with the count, so no crash can fall between the terminations and their record. A SHARE lock
    // on l2flow.step_memo holds that statement before it does anything (its memo insert needs the table's lock).
    const prev = addDays(D, -1);
    const h = await crashHarness({ startDate: prev, sysKillIdleSeconds: 0 });
    const role = `victim_${h.db.name}`;
    await h.query(`create role ${role} login`);
    h.afterClose(() => dropRole(role));
    const victim = new pg.Client({ connectionString: h.db.uri.replace(/\/\/[^@]*@/, `//${role}@`), application_name: 'crash-victim' });
    victim.on('error', () => undefined); // it is meant to be terminated
    await victim.connect();
    h.afterClose(() => victim.end().catch(() => undefined));
    const victimPid = (await victim.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]!.pid;
    const victimAlive = async () => (await h.query(`select 1 from pg_stat_activity where pid = $1`, [victimPid])).length === 1;

    await h.flag(D);
    h.start();
    await h.trigger(D);
    const before = await h.waitRun('the run to wait for the previous day', D, (r) => r.current_step === 'wait_for_success_end');
    const hold = await h.hold('lock table l2flow.step_memo in share mode');
    // The previous day's run counts as successful: a row is all wait_for_success_end reads (and it is notified).
    // (A real run of that day could not get past its own first memo while the test holds the lock.)
    await h.query(`insert into l2flow.run (run_id, workflow_id, logical_date, business_date, status, finished_at)
      values ($1, $2, $3, $4, 'success', now())`, [`manual__${prev}`, WF, prev, addDays(prev, -1)]);
    const orphans = await h.lockWaiters('%insert into l2flow.step_memo%');
    await h.waitRun('the session killer to be the current step', D, (r) => r.current_step === 'run_sys_kill_all_session_pg');
    // Its statement waits for its lock: nothing is terminated, nothing recorded.
    expect(await victimAlive()).toBe(true);
    expect(await h.query(`select step from l2flow.step_memo where step like 'child:%'`)).toEqual([]);

    await h.kill();
    const second = h.start();
    await h.lockWaiters('%insert into l2flow.step_memo%', orphans); // invoked again
    await hold.release();
    expect((await h.finished(D)).status).toBe('success');
    // Terminated by one of them (the orphaned statement, had the server not ended it yet, or the resumed one), and
    // recorded once: the other found the memo, or met it and read it.
    await until('the idle session to be terminated', async () => !(await victimAlive()));

    expectRestored(second, before.run_id);
    await expectSucceededOnce(h, [D], { loadIds: { [D]: before.load_id } });
    const memos = await h.query<{ output: { terminated: number } }>(`select output from l2flow.step_memo where step = 'child:sys_kill_all_session_pg'`);
    expect(memos).toHaveLength(1);
    expect(memos[0]!.output.terminated).toBeGreaterThanOrEqual(1);
  });

  it('run_wf_data_preparation_for_reports: killed while the child runs; its effect commits once', async () => {
    const h = await crashHarness();
    await h.gate('reports', false);
    await h.flag(D);
    h.start();
    await h.trigger(D);
    const orphans = await h.activeQueries(`%dwh.child('reports'%`);
    const before = await h.waitRun('only reports to be in flight', D, (r) => r.current_step === 'run_wf_data_preparation_for_reports');

    await h.kill();
    // The dead process's child statement does not read its socket; client_connection_check_interval makes PostgreSQL
    // abort it about a second after the kill, so it cannot run on beside the resumed step or outside the pool slot.
    await h.gone('the orphaned child statement to be aborted by PostgreSQL', orphans, 5_000);
    const second = h.start();
    await h.activeQueries(`%dwh.child('reports'%`, orphans); // the resumed step runs the child again
    expect(await h.query(`select count(*)::int as n from dwh.child_calls where child = 'reports'`)).toEqual([{ n: 0 }]);
    await h.gate('reports', true);
    expect((await h.finished(D)).status).toBe('success');

    expectRestored(second, before.run_id);
    // The orphan's insert was rolled back with its transaction: one row.
    await expectSucceededOnce(h, [D], { loadIds: { [D]: before.load_id } });
  });

  it('load_ds_client_segmentation: killed while the child runs; its effect commits once and SAP gets one flag', async () => {
    const h = await crashHarness();
    await h.gate('segmentation', false);
    await h.flag(D);
    h.start();
    await h.trigger(D);
    const orphans = await h.activeQueries(`%dwh.child('segmentation'%`);
    const before = await h.waitRun('only segmentation to be in flight', D, (r) => r.current_step === 'load_ds_client_segmentation');
    expect(h.sap.requests).toHaveLength(0);

    await h.kill();
    await h.gone('the orphaned child statement to be aborted by PostgreSQL', orphans, 5_000);
    const second = h.start();
    await h.activeQueries(`%dwh.child('segmentation'%`, orphans);
    await h.gate('segmentation', true);
    expect((await h.finished(D)).status).toBe('success');

    expectRestored(second, before.run_id);
    await expectSucceededOnce(h, [D], { loadIds: { [D]: before.load_id } });
  });

  it('send_flg_to_sap: killed while SAP holds its answer; SAP gets the same key and the same body again, once more', async () => {
    // The documented window: SAP has received the POST, l2flow dies before it records an answer. The resumed step
    // finds its l2flow.sap_send row still `sending` and re-sends it with the same Idempotency-Key and the byte-identical
    // body fixed at the first try, so SAP can drop the duplicate. Per logical date there is one distinct key and body.
    const h = await crashHarness();
    const held: http.ServerResponse[] = [];
    h.sap.setHandler((res) => void held.push(res)); // never answer
    await h.flag(D);
    h.start();
    await h.trigger(D);
    await until('SAP to receive the flag', async () => h.sap.requests.length === 1);
    const before = await h.waitRun('send_flg_to_sap to be in flight', D, (r) => r.current_step?.split(',').includes('send_flg_to_sap') ?? false);
    expect(await h.query(`select status, tries from l2flow.sap_send`)).toEqual([{ status: 'sending', tries: 1 }]);

    await h.kill();
    h.sap.setHandler((res) => res.writeHead(200, { 'content-type': 'application/json' }).end('{"ok":true}'));
    for (const res of held) res.destroy();
    const second = h.start();
    expect((await h.finished(D)).status).toBe('success');

    expectRestored(second, before.run_id);
    expect(h.sap.requests).toHaveLength(2);
    const [first, again] = h.sap.requests;
    expect(again!.headers['idempotency-key']).toBe(first!.headers['idempotency-key']);
    expect(again!.body).toBe(first!.body);
    await expectSucceededOnce(h, [D], { loadIds: { [D]: before.load_id }, sapResends: 1 });
    expect(await h.query(`select status, tries, http_status from l2flow.sap_send`)).toEqual([{ status: 'sent', tries: 2, http_status: 200 }]);
  });
});

async function dropRole(role: string): Promise<void> {
  const admin = new pg.Client({ connectionString: process.env.L2FLOW_TEST_ADMIN_URI ?? 'postgres://root@127.0.0.1:5432/postgres' });
  await admin.connect();
  try {
    await admin.query(`drop role if exists ${role}`);
  } finally {
    await admin.end();
  }
}
