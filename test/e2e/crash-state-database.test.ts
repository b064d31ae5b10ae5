import { describe, expect, it } from 'vitest';
import { crashHarness, D, expectRestored, expectSucceededOnce, type CrashHarness } from '../helpers/crash.js';
import type { Runtime } from '../helpers/process.js';

// Crash and resume with l2flow's tables in a database of their own (L2FLOW_CONN_STATE): the windows of the intent
// protocol (src/services/db/step-memo.ts), staged on the real `l2flow run` process. workflow_registration's warehouse
// transaction writes its intent to the state database, commits in the warehouse, then turns the intent into its memo;
// the test stops the process between two of those moments with a lock or a gate, SIGKILLs it, ends the dead process's
// orphaned statement, and starts another process. The md rows must be written exactly once either way.

/** The `resumed` flag of each 'workflow registered' line a process logged. */
function registrations(rt: Runtime): boolean[] {
  return rt.logs.flatMap((line) => {
    try {
      const l = JSON.parse(line) as { msg?: string; resumed?: boolean };
      return l.msg === 'workflow registered, load session opened' ? [l.resumed === true] : [];
    } catch {
      return [];
    }
  });
}

const intents = async (h: CrashHarness) => (await h.query<{ n: number }>('select count(*)::int as n from l2flow.step_intent'))[0]!.n;

describe('crash and resume with a separate state database', () => {
  it('(a) killed after the warehouse committed, before the memo was written: the step is resumed, md rows are written once', async () => {
    const h = await crashHarness({ separateState: true });
    // No memo can be written (reads still can): the process stops right after the warehouse commit.
    const hold = await h.hold('lock table l2flow.step_memo in exclusive mode');
    await h.flag(D);
    h.start();
    await h.trigger(D);
    const stuck = await h.lockWaiters('%l2flow.step_memo%');
    expect(await intents(h)).toBe(1);
    expect(await h.query(`select status_cd from md.data_load_session`)).toEqual([{ status_cd: 'start' }]);
    // Its snapshot holds the step (written once the run was quiet there, ~20 ms): the next process restores it.
    const before = await h.waitRun('workflow_registration to be the current step', D, (r) => r.current_step === 'workflow_registration');

    await h.kill();
    // Its blocked statement would turn the intent into the memo once the lock goes: end it, as a crash of the server side would.
    await h.query('select pg_terminate_backend(pid) from pg_stat_activity where pid = any($1::int[])', [stuck.map((b) => b.pid)]);
    await h.gone('the dead process\'s memo statement to end', stuck);
    await hold.release();
    expect(await intents(h)).toBe(1);

    const second = h.start();
    expect((await h.finished(D)).status).toBe('success');
    expectRestored(second, before.run_id);
    expect(registrations(second)).toEqual([true]);
    await expectSucceededOnce(h, [D], { loadIds: { [D]: before.load_id } });
    expect(await intents(h)).toBe(0);
    expect(await h.query(`select count(*)::int as n from l2flow.step_memo where step = 'workflow_registration'`)).toEqual([{ n: 1 }]);
  });

  it('(b) killed after the intent was written, before the warehouse committed: the step runs again, md rows are written once', async () => {
    const h = await crashHarness({ separateState: true });
    // A deferred trigger holds the warehouse COMMIT of workflow_registration (it writes md.job_session) until the gate opens.
    await h.query(`insert into dwh.gate values ('commit', false);
      create function dwh.hold_commit() returns trigger language plpgsql as $$
      begin
        while not (select open from dwh.gate where name = 'commit') loop perform pg_sleep(0.02); end loop;
        return null;
      end $$;
      create constraint trigger hold_commit after insert or update on md.job_session
        deferrable initially deferred for each row execute function dwh.hold_commit()`);
    await h.flag(D);
    h.start();
    await h.trigger(D);
    const committing = await h.activeQueries('commit');
    expect(await intents(h)).toBe(1);
    // Its snapshot holds the step (written once the run was quiet there, ~20 ms): the next process restores it.
    const before = await h.waitRun('workflow_registration to be the current step', D, (r) => r.current_step === 'workflow_registration');

    await h.kill();
    // The warehouse transaction dies without committing, as it would with its connection.
    await h.query('select pg_terminate_backend(pid) from pg_stat_activity where pid = any($1::int[])', [committing.map((b) => b.pid)]);
    await h.gone('the dead process\'s warehouse transaction to end', committing);
    expect(await h.query(`select count(*)::int as n from md.job_session`)).toEqual([{ n: 0 }]);
    await h.query(`update dwh.gate set open = true where name = 'commit'`);

    const second = h.start();
    expect((await h.finished(D)).status).toBe('success');
    expectRestored(second, before.run_id);
    expect(registrations(second)).toEqual([false]);
    await expectSucceededOnce(h, [D], { loadIds: { [D]: before.load_id } });
    expect(await intents(h)).toBe(0);
  });
});
