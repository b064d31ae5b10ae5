import { describe, expect, it } from 'vitest';
import { addDays } from '../../src/lib/dates.js';
import { FLAG, WF, useFixture, type Fixture } from '../helpers/app-fixture.js';
import { until } from '../helpers/process.js';

// Pool dwh_l2 at run level: two l2flow processes (two apps on one database), one run each, released by the same
// flag insert. The reports child records its own start and end on the server; with one slot the two never overlap.

let fx: Fixture;
useFixture((f) => (fx = f));

const D1 = '2024-05-10';
const D2 = '2024-05-20';
const REPORTS_STEP = 'run_wf_data_preparation_for_reports';

interface Call {
  logical_date: string;
  started: Date;
  ended: Date;
}

describe('pool dwh_l2 across processes, at run level', () => {
  it('two runtimes, two runs released at once: their reports children never overlap and both runs succeed', async () => {
    await fx.db.pool.query(`
      create table public.reports_calls (logical_date date, started timestamptz, ended timestamptz);
      create function public.reports_child(p_date date, p_load bigint) returns integer language plpgsql as $$
      declare t0 timestamptz := clock_timestamp();
      begin
        perform pg_sleep(1.5);
        insert into public.reports_calls values (p_date, t0, clock_timestamp());
        return 1;
      end $$;`);
    // D2's wait_for_success_end waits for the run of D2 − 1: a finished one is on record, so neither run waits
    // for the other and only the pool can keep their reports children apart.
    await fx.db.pool.query(
      `insert into l2flow.run (run_id, workflow_id, logical_date, business_date, status, started_at, finished_at)
       values ($1, $2, $3, $4, 'success', now(), now())`,
      [`manual__${addDays(D2, -1)}`, WF, addDays(D2, -1), addDays(D2, -2)],
    );
    const file = {
      children: { wf_data_preparation_for_reports: { kind: 'sql', statement: 'select public.reports_child($1, $2)' } },
    };

    // A may execute one run (max_active_runs slots are shared by every process): it takes D1 and can never take D2.
    const a = await fx.startApp(D1, { file: { ...file, workflow: { maxActiveRuns: 1 } } });
    await fx.trigger(D1);
    await until('process A to execute D1 (parked in its flag sensor)', async () => a.supervisor.activeRunIds().includes(`manual__${D1}`));
    const b = await fx.startApp(D1, { file: { ...file, workflow: { maxActiveRuns: 2 } } });
    await fx.trigger(D2);
    await until('process B to execute D2 (parked in its flag sensor)', async () => b.supervisor.activeRunIds().includes(`manual__${D2}`));
    expect(a.supervisor.activeRunIds()).toEqual([`manual__${D1}`]);
    expect(b.supervisor.activeRunIds()).toEqual([`manual__${D2}`]);

    // One statement, one commit: both sensors are released by the same pair of notifications.
    await fx.db.pool.query('insert into md.dwh_flag (flag_cd, bussines_date) values ($1, $2), ($1, $3)', [FLAG, addDays(D1, -1), addDays(D2, -1)]);
    const [r1, r2] = [await fx.finished(D1, 30_000), await fx.finished(D2, 30_000)];
    expect(r1, JSON.stringify(r1.error_info)).toMatchObject({ status: 'success' });
    expect(r2, JSON.stringify(r2.error_info)).toMatchObject({ status: 'success' });

    // Each run was executed, start to end, by its own process.
    const owners = (await fx.db.pool.query<{ logical_date: string; owner: string }>(
      `select logical_date::text, owner from l2flow.run where logical_date in ($1, $2) order by logical_date`, [D1, D2])).rows;
    expect(owners).toEqual([{ logical_date: D1, owner: a.owner }, { logical_date: D2, owner: b.owner }]);

    const calls = (await fx.db.pool.query<Call>(`select logical_date::text, started, ended from public.reports_calls order by started`)).rows;
    expect(calls.map((c) => c.logical_date).sort()).toEqual([D1, D2]);
    const [first, second] = calls as [Call, Call];
    expect(second.started.getTime(), `reports of ${second.logical_date} started before reports of ${first.logical_date} ended`)
      .toBeGreaterThanOrEqual(first.ended.getTime());

    // The slot was contended (the test is not vacuous): the later run entered its reports step while the earlier
    // child still ran, so it waited for the slot rather than arriving after it was free.
    const entered = (await fx.db.pool.query<{ started_at: Date }>(
      `select s.started_at from l2flow.step s join l2flow.run r using (run_id) where r.logical_date = $1 and s.step = $2`,
      [second.logical_date, REPORTS_STEP])).rows[0]!;
    expect(entered.started_at.getTime()).toBeLessThan(first.ended.getTime());
  }, 60_000);
});
