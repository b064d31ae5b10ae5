import { describe, expect, it } from 'vitest';
import { crashHarness, D, expectRestored, expectSucceededOnce } from '../helpers/crash.js';
import { until } from '../helpers/process.js';

// Crash and resume, part 2: the warehouse metadata steps and the failure mail. Each step is held open by a lock
// the test takes on what the step writes; the moment is when pg_stat_activity shows l2flow's backend waiting on
// that Lock. After the SIGKILL the dead process's statement may go on waiting in PostgreSQL (a backend blocked on a
// lock does not read its socket, so it notices the dead client only when the statement ends, or within a second on a
// connection with client_connection_check_interval). The new process is started and shown to wait on the same lock,
// then the hold is released: an orphan still there finishes its statement and is rolled back when it finds the socket
// closed (inside a transaction) or commits (autocommit). Either way each step must take effect exactly once.

describe('crash and resume: metadata steps and the failure mail', () => {
  it('get_load_id: killed while assigning the load id; the id is assigned once and never changes', async () => {
    const h = await crashHarness();
    h.start();
    await h.trigger(D);
    const before = await h.waitRun('the run to park in wait_for_l2_full_load', D, (r) => r.current_step === 'wait_for_l2_full_load');
    // Holding the run row blocks get_load_id's `update l2flow.run set load_id = coalesce(load_id, nextval(…))`
    // (and the supervisor's snapshot write for the same transition).
    const hold = await h.hold(`select 1 from l2flow.run where run_id = $1 for update`, [before.run_id]);
    await h.flag(D);
    await h.lockWaiters('%nextval%');

    await h.kill();
    expect((await h.run(D))!.load_id).toBeNull();
    const second = h.start();
    await h.lockWaiters('%set owner%'); // the new process, claiming the run, waits behind the dead one's statements
    await hold.release();
    const done = await h.finished(D);
    expect(done.status).toBe('success');

    expectRestored(second, before.run_id);
    await expectSucceededOnce(h, [D]);
    // The sequence was drawn once: the dead process's UPDATE committed after its death, the resumed step kept that id.
    expect(await h.query(`select last_value::text from md.load_id_seq`)).toEqual([{ last_value: done.load_id }]);
  });

  it('workflow_registration: killed inside the registration transaction; md rows are written once', async () => {
    const h = await crashHarness();
    const hold = await h.hold('lock table md.workflow in access exclusive mode');
    await h.flag(D);
    h.start();
    await h.trigger(D);
    const orphans = await h.lockWaiters('%md.workflow%');
    const before = await h.waitRun('workflow_registration to be the current step', D, (r) => r.current_step === 'workflow_registration');
    expect(before.load_id).not.toBeNull();

    await h.kill();
    const second = h.start();
    await h.lockWaiters('%md.workflow%', orphans); // the step invoked again by the new process
    await hold.release();
    expect((await h.finished(D)).status).toBe('success');

    expectRestored(second, before.run_id);
    await expectSucceededOnce(h, [D], { loadIds: { [D]: before.load_id } });
  });

  it('end: killed inside the closing transaction; the session is closed and logged once', async () => {
    const h = await crashHarness();
    await h.gate('reports', false);
    await h.flag(D);
    h.start();
    await h.trigger(D);
    // With reports held, everything up to end has happened; lock the session table, then let the run reach end.
    await h.activeQueries(`%dwh.child('reports'%`);
    await h.waitRun('segmentation and SAP to be done', D, (r) => r.current_step === 'run_wf_data_preparation_for_reports');
    const hold = await h.hold('lock table md.data_load_session in access exclusive mode');
    await h.gate('reports', true);
    const orphans = await h.lockWaiters('%md.data_load_session%');
    const before = await h.waitRun('end to be the current step', D, (r) => r.current_step === 'end');

    await h.kill();
    const second = h.start();
    await h.lockWaiters('%md.data_load_session%', orphans);
    await hold.release();
    expect((await h.finished(D)).status).toBe('success');

    expectRestored(second, before.run_id);
    await expectSucceededOnce(h, [D], { loadIds: { [D]: before.load_id } });
  });

  it('every step committed but no snapshot persisted: the resumed run replays every step from its memos, nothing twice', async () => {
    // The widest window: each step's work commits, the process dies before the run record says so. A SHARE lock on
    // l2flow.step blocks only the supervisor's snapshot writes (they upsert the step history), so the run executes
    // to the end in memory while l2flow.run still says wait_for_l2_full_load.
    const h = await crashHarness();
    h.start();
    await h.trigger(D);
    const before = await h.waitRun('the run to park in wait_for_l2_full_load', D, (r) => r.current_step === 'wait_for_l2_full_load');
    const hold = await h.hold('lock table l2flow.step in share mode');
    await h.flag(D);
    await until('end to have committed', async () =>
      (await h.query(`select 1 from l2flow.step_memo where run_id = $1 and step = 'end'`, [before.run_id])).length === 1);
    const orphans = await h.lockWaiters('%insert into l2flow.step (%');
    const stale = (await h.run(D))!;
    expect(stale).toMatchObject({ status: 'running', current_step: 'wait_for_l2_full_load' });
    expect(stale.load_id).not.toBeNull(); // get_load_id writes the id on the run row itself
    expect(h.sap.requests).toHaveLength(1);

    await h.kill();
    const second = h.start();
    await h.lockWaiters('%insert into l2flow.step (%', orphans);
    await hold.release();
    expect((await h.finished(D)).status).toBe('success');

    expectRestored(second, before.run_id);
    await expectSucceededOnce(h, [D], { loadIds: { [D]: stale.load_id } });
    const said = (msg: string) => second.logs.filter((l) => l.includes(msg)).map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(said('workflow registered, load session opened')).toMatchObject([{ resumed: true }]);
    expect(said('child already completed in this attempt; not run again').map((l) => l.child).sort()).toEqual(
      ['l1_to_l2_p_load_data_ds_client_segmentation_full', 'sys_kill_all_session_pg', 'wf_data_preparation_for_reports']);
    expect(said('SAP already has this flag; not sending again')).toHaveLength(1);
    expect(said('load session closed as successful')).toMatchObject([{ resumed: true }]);
  });

  it('email_on_failure: killed while queueing the failure mail of a failed run; exactly one mail goes out', async () => {
    const h = await crashHarness();
    h.sap.setHandler((res) => res.writeHead(400, { 'content-type': 'application/json' }).end('{"error":"rejected"}'));
    // SHARE blocks the outbox INSERT only; the mail dispatcher's reads and FOR UPDATE SKIP LOCKED go on.
    const hold = await h.hold('lock table l2flow.email_outbox in share mode');
    await h.flag(D);
    h.start();
    await h.trigger(D);
    const orphans = await h.lockWaiters('%insert into l2flow.email_outbox%');
    const before = await h.waitRun('email_on_failure to be the current step', D, (r) => r.current_step === 'email_on_failure');
    expect(before.status).toBe('running');

    await h.kill();
    const second = h.start();
    await h.lockWaiters('%insert into l2flow.email_outbox%', orphans);
    await hold.release();
    const done = await h.finished(D);
    expect(done.status).toBe('failed');
    expect(done.error?.code).toBe('SAP_HTTP_ERROR');
    expect(done.load_id).toBe(before.load_id);
    expectRestored(second, before.run_id);

    const [mail] = await h.smtp.waitForMessages(1);
    expect(mail!.subject).toContain('send_flg_to_sap');
    const outbox = await until('the mail to be recorded as sent', async () => {
      const rows = await h.query<{ status: string; tries: number }>(`select status, tries from l2flow.email_outbox where run_id = $1`, [before.run_id]);
      return rows.length === 1 && rows[0]!.status === 'sent' ? rows : null;
    });
    expect(outbox).toEqual([{ status: 'sent', tries: 1 }]);
    // The only outbox row is sent: nothing is left that could be delivered again.
    expect(h.smtp.dataStarted).toBe(1);
    expect(h.smtp.messages).toHaveLength(1);

    expect(h.sap.requests).toHaveLength(1); // a 400 is not retried, and the failed step is not re-run after the restart
    expect(await h.query(`select load_id::text, status_cd from md.data_load_session`)).toEqual([{ load_id: before.load_id, status_cd: 'f' }]);
    expect(await h.query(`select load_id::text, status_cd from md.job_session`)).toEqual([{ load_id: before.load_id, status_cd: 'f' }]);
    const log = await h.query<{ level_cd: string; message: string }>(`select level_cd, message from md.session_log order by log_id`);
    expect(log.map((l) => `${l.level_cd} ${l.message.split(' ')[0]}`)).toEqual(['i start', 'e failed']);
    const steps = await h.query<{ step: string; status: string }>(
      `select step, status from l2flow.step where run_id = $1 and step in ('send_flg_to_sap', 'email_on_failure') order by step`, [before.run_id]);
    expect(steps).toEqual([{ step: 'email_on_failure', status: 'success' }, { step: 'send_flg_to_sap', status: 'failed' }]);
  });
});
