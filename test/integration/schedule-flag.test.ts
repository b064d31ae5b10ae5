import { filter, firstValueFrom } from 'rxjs';
import { describe, expect, it } from 'vitest';
import type { App } from '../../src/runtime/app.js';
import { createRun } from '../../src/runtime/run-store.js';
import { createFlaggedRunTaken } from '../../src/runtime/schedule-store.js';
import { createSegmentationView, createSplitTestDbs } from '../helpers/db.js';
import { until } from '../helpers/process.js';
import { FLAG, useScheduleFixture, WF } from '../helpers/schedule-fixture.js';

// schedule.onFlag on the leader: the flag for business date B creates the run of B + 1 through the sensor's NOTIFY;
// flags that came while nothing ran get their runs at the next start; nothing outside the start and end dates.

const f = useScheduleFixture();

/** onFlag on, the fallback scan a minute away: within a test only a notification or a (re)start creates runs. */
const flagFile = (onFlag: Record<string, unknown> = {}) => ({
  workflow: { startDate: '2024-05-01' },
  sensors: { wait_for_l2_full_load: { pokeIntervalSeconds: 60 } },
  schedule: { onFlag: { enabled: true, ...onFlag } },
});

const insertFlag = (businessDate: string, code = FLAG) => f.db().pool.query(`insert into md.dwh_flag (flag_cd, bussines_date) values ($1, $2)`, [code, businessDate]);

/** Runs that execute to the end: wait_for_success_end passes when the previous date has no run. */
const runsThrough = (workflow: Record<string, unknown> = {}) => {
  const file = flagFile();
  return {
    ...file,
    workflow: { ...file.workflow, ...workflow },
    sensors: { ...file.sensors, wait_for_success_end: { whenMissing: 'pass' as const } },
  };
};

/** What one date's run went through in `app`: its l2flow_run notifications, the flag checks for its business date, its events. */
function watch(app: App, logicalDate: string, businessDate: string) {
  const seen = { statuses: [] as string[], flagChecks: 0, events: [] as string[] };
  const subs = [
    app.hub.notifications$.subscribe((n) => {
      const p = n.payload as { logical_date?: string; status?: string };
      if (n.channel === 'l2flow_run' && p.logical_date === logicalDate && p.status) seen.statuses.push(p.status);
    }),
    app.sensorChecks$.subscribe((c) => {
      if (c.sensor === 'wait_for_l2_full_load' && c.keys.includes(businessDate)) seen.flagChecks += 1;
    }),
    app.supervisor.events$.subscribe((e) => {
      if (e.logicalDate === logicalDate) seen.events.push(`${e.type} ${e.steps.join(',') || e.status}`);
    }),
  ];
  const finished = firstValueFrom(app.supervisor.events$.pipe(filter((e) => e.logicalDate === logicalDate && e.type === 'finished')));
  return { seen, finished, stop: () => subs.forEach((s) => s.unsubscribe()) };
}

async function started(app: App): Promise<App> {
  await app.start();
  await until('the app to lead', async () => app.supervisor.isLeader());
  return app;
}

describe('schedule.onFlag', () => {
  it('creates the run of B + 1 as soon as the flag for B is committed, long before any poll', async () => {
    await f.fresh();
    const app = await started(f.app(flagFile()));
    await app.scheduler.scanFlags(); // the leader's start-up scan is done: what follows is the notification's work
    const t0 = Date.now();
    await insertFlag('2024-05-09');
    await until('the run of 2024-05-10', async () => (await f.runs()).length === 1, 10_000, 10);
    const ms = Date.now() - t0;
    expect(await f.runs()).toEqual([{ d: '2024-05-10', by: 'flag' }]);
    // The fallback scan is 60 s away; a bound this loose only says "the notification did it", never how fast.
    expect(ms).toBeLessThan(10_000);
    // Another code, or the same flag again: no further run.
    await insertFlag('2024-05-11', 'some_other_flag');
    await insertFlag('2024-05-09');
    await insertFlag('2024-05-10');
    await until('the run of 2024-05-11', async () => (await f.runs()).length === 2, 10_000, 10);
    expect(await f.runs()).toEqual([{ d: '2024-05-10', by: 'flag' }, { d: '2024-05-11', by: 'flag' }]);
  });

  it('creates the runs of flags that arrived while no process ran, at the next start, within the start and end dates', async () => {
    await f.fresh();
    // 04-29 → 04-30 is before the start date; 05-07 → 05-08 after the end date; 05-03 and 05-05 are inside.
    for (const b of ['2024-04-29', '2024-05-03', '2024-05-05', '2024-05-07']) await insertFlag(b);
    const app = await started(f.app(flagFile({ endDate: '2024-05-06' })));
    await until('two runs', async () => (await f.runs()).length === 2);
    expect(await app.scheduler.scanFlags()).toEqual([]);
    expect(await f.runs()).toEqual([{ d: '2024-05-04', by: 'flag' }, { d: '2024-05-06', by: 'flag' }]);
    // Live flags outside the dates create nothing either; one inside does, which also shows the listener is up.
    await insertFlag('2024-04-28');
    await insertFlag('2024-05-10');
    await insertFlag('2024-05-04');
    await until('the run of 2024-05-05', async () => (await f.runs()).length === 3);
    expect((await f.runs()).map((r) => r.d)).toEqual(['2024-05-04', '2024-05-05', '2024-05-06']);
  });

  it('is the leader’s job only, and the next leader picks up a flag that came during the change', async () => {
    await f.fresh();
    const first = await started(f.app(flagFile()));
    const second = f.app(flagFile());
    await second.start();
    await insertFlag('2024-05-02');
    await until('the run of 2024-05-03', async () => (await f.runs()).length === 1);
    expect(second.supervisor.isLeader()).toBe(false);
    expect(await second.scheduler.scanFlags()).toEqual([]);
    await first.stop();
    // Until the second one's next claim round nobody leads: this flag's notification may reach no scheduler, and the
    // new leader's start-up scan must find it.
    await insertFlag('2024-05-03');
    await until('the second app to lead', async () => second.supervisor.isLeader());
    await until('the run of 2024-05-04', async () => (await f.runs()).length === 2);
    expect(await f.runs()).toEqual([{ d: '2024-05-03', by: 'flag' }, { d: '2024-05-04', by: 'flag' }]);
  });

  it('hands the run it creates to its own supervisor: created running, past the sensor on the creating statement, no claim round, no flag check', async () => {
    await createSegmentationView((await f.fresh()).pool, 3);
    // The claim loop's fallback round and the flag scan are a minute away: only the handoff can start the run.
    const app = await started(f.app(runsThrough(), { claimIntervalMs: 60_000 }));
    await app.scheduler.scanFlags();
    const w = watch(app, '2024-05-10', '2024-05-09');
    await insertFlag('2024-05-09');
    expect((await w.finished).status).toBe('success');
    w.stop();
    // Created taken (never queued), so no claim round was needed; the statement that created it read the flag row,
    // so the sensor passed without a check query of its own.
    expect(w.seen.statuses[0]).toBe('running');
    expect(w.seen.statuses).not.toContain('queued');
    expect(w.seen.flagChecks).toBe(0);
    expect(w.seen.events.slice(0, 3)).toEqual(['transition wait_for_l2_full_load', 'started wait_for_l2_full_load', 'transition get_load_id']);
    expect(w.seen.events.at(-1)).toBe('finished success');
    const [row] = (await f.db().pool.query(`select run_id, status, owner, triggered_by from l2flow.run where logical_date = '2024-05-10'`)).rows;
    expect(row).toEqual({ run_id: 'flag__2024-05-10', status: 'success', owner: app.owner, triggered_by: 'flag' });
    expect(await f.runs()).toEqual([{ d: '2024-05-10', by: 'flag' }]);
  });

  it('with every max_active_runs slot taken, the run is created queued, and its sensor checks the flag when a slot frees', async () => {
    await createSegmentationView((await f.fresh()).pool, 3);
    const app = await started(f.app(runsThrough({ maxActiveRuns: 1 }), { claimIntervalMs: 60_000 }));
    await app.scheduler.scanFlags();
    // The one slot: a run parked in its flag sensor (no flag for 2024-05-19 yet).
    await createRun(f.db().pool, { workflowId: WF, logicalDate: '2024-05-20', businessDate: '2024-05-19', triggeredBy: 'manual' });
    await until('the manual run to park', async () => app.supervisor.activeRunIds().length === 1);
    const w = watch(app, '2024-05-10', '2024-05-09');
    await insertFlag('2024-05-09');
    await until('the run of 2024-05-10', async () => (await f.runs()).length === 2);
    expect(app.supervisor.activeRunIds()).toEqual(['manual__2024-05-20']);
    // The parked run's flag frees the slot (the run of its date exists: onFlag creates nothing); the queued run
    // is claimed when that run finishes, and its own sensor looks at the flag table.
    await insertFlag('2024-05-19');
    expect((await w.finished).status).toBe('success');
    w.stop();
    expect(w.seen.statuses[0]).toBe('queued');
    expect(w.seen.flagChecks).toBeGreaterThanOrEqual(1);
    expect(await f.runs()).toEqual([{ d: '2024-05-10', by: 'flag' }, { d: '2024-05-20', by: 'manual' }]);
  });

  it('the taken run is created only where the flag row is, once, in one database and with a separate state database', async () => {
    const one = await f.fresh();
    const split = await createSplitTestDbs();
    try {
      for (const db of [{ state: one.pool, dwh: one.pool }, split.db]) {
        const o = { flagTable: 'md.dwh_flag', flagCode: FLAG, workflowId: WF, window: { startDate: '2024-05-01', endDate: null }, owner: 'me' };
        expect(await createFlaggedRunTaken(db, { ...o, businessDate: '2024-05-09' })).toBeNull(); // no flag yet
        await db.dwh.query(`insert into md.dwh_flag (flag_cd, bussines_date) values ($1, '2024-05-09'), ('other', '2024-05-10'), ($1, '2024-04-20')`, [FLAG]);
        expect(await createFlaggedRunTaken(db, { ...o, businessDate: '2024-05-10' })).toBeNull(); // another code
        expect(await createFlaggedRunTaken(db, { ...o, businessDate: '2024-04-20' })).toBeNull(); // before the start date
        const row = await createFlaggedRunTaken(db, { ...o, businessDate: '2024-05-09' });
        expect(row).toMatchObject({ run_id: 'flag__2024-05-10', logical_date: '2024-05-10', business_date: '2024-05-09', status: 'running', owner: 'me', triggered_by: 'flag' });
        expect(row!.started_at).toBeInstanceOf(Date);
        expect(await createFlaggedRunTaken(db, { ...o, businessDate: '2024-05-09' })).toBeNull(); // the date has its run
        expect((await db.state.query(`select count(*)::int as n from l2flow.run`)).rows[0].n).toBe(1);
      }
    } finally {
      await split.drop();
    }
  });
});
