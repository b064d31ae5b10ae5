import { describe, expect, it } from 'vitest';
import type { App } from '../../src/runtime/app.js';
import { dateInZone } from '../../src/lib/dates.js';
import { skippedSummary } from '../../src/runtime/schedule-store.js';
import { runMain, until } from '../helpers/process.js';
import { useScheduleFixture, WF } from '../helpers/schedule-fixture.js';

// schedule.cron on the leader: ticks in the workflow timezone, catchup, enabled, start/end dates, leader changes.

const f = useScheduleFixture();

/** A wall clock the test moves: the scheduler reads it, timers stay real. */
function clock(iso: string) {
  let at = new Date(iso);
  return { now: () => at, set: (next: string) => (at = new Date(next)) };
}

const cronFile = (cron: Record<string, unknown>, workflow: Record<string, unknown> = {}) => ({
  workflow: { timezone: 'UTC', startDate: '2024-05-01', ...workflow },
  schedule: { cron: { expression: '0 6 * * *', ...cron } },
});

async function leader(app: App): Promise<void> {
  await until('the app to lead', async () => app.supervisor.isLeader());
}

describe('schedule.cron', () => {
  it('creates the run at its tick, for the date of the tick in the workflow timezone', async () => {
    await f.fresh();
    // A tick 3 s from now, written in Tashkent's wall-clock time (UTC+5): the date is Tashkent's, not UTC's.
    const tick = new Date(Math.ceil(Date.now() / 1000) * 1000 + 3000);
    const parts = Object.fromEntries(
      new Intl.DateTimeFormat('en-GB', { timeZone: 'Asia/Tashkent', hour: 'numeric', minute: 'numeric', second: 'numeric', hourCycle: 'h23' })
        .formatToParts(tick)
        .map((p) => [p.type, Number(p.value)]),
    );
    const date = dateInZone('Asia/Tashkent', tick);
    const app = f.app({
      workflow: { timezone: 'Asia/Tashkent', startDate: date },
      schedule: { cron: { expression: `${parts.second} ${parts.minute} ${parts.hour} * * *` } },
    });
    await app.start();
    await leader(app);
    await until('the next tick to be planned', async () => app.scheduler.nextCronAt()?.getTime() === tick.getTime());
    expect(await f.runs()).toEqual([]);
    const run = await until('the scheduled run', async () => (await f.runs())[0], 15_000);
    expect(Date.now()).toBeGreaterThanOrEqual(tick.getTime());
    expect(run).toEqual({ d: date, by: 'scheduled' });
    const { rows } = await f.db().pool.query(`select created_at, business_date::text from l2flow.run`);
    expect(rows[0].created_at.getTime()).toBeGreaterThanOrEqual(tick.getTime());
    // The next one is tomorrow's tick (planned once the round that created the run ends, just after its commit): a
    // date has one run however often its schedule ticks.
    await until('tomorrow\'s tick to be planned', async () => app.scheduler.nextCronAt()?.getTime() === tick.getTime() + 24 * 3600_000);
    expect(await f.runs()).toEqual([{ d: date, by: 'scheduled' }]);
  });

  it('catchup true creates every missed date since the start date, then since the last run', async () => {
    await f.fresh();
    const c = clock('2024-05-05T12:00:00Z');
    const app = f.app(cronFile({ catchup: true }), { now: c.now });
    await app.start();
    await leader(app);
    const dates = ['2024-05-01', '2024-05-02', '2024-05-03', '2024-05-04', '2024-05-05'];
    await until('five runs', async () => (await f.runs()).length === 5);
    expect(await f.runs()).toEqual(dates.map((d) => ({ d, by: 'scheduled' })));
    // Down for three days (the 08th's tick is at 06:00, so it is due too); nothing before the last decided date again.
    c.set('2024-05-08T07:00:00Z');
    const round = await app.scheduler.runCronNow();
    expect(round).toMatchObject({ due: ['2024-05-06', '2024-05-07', '2024-05-08'], created: ['2024-05-06', '2024-05-07', '2024-05-08'], skipped: [] });
    expect((await f.runs()).map((r) => r.d)).toEqual([...dates, '2024-05-06', '2024-05-07', '2024-05-08']);
    expect(await f.skipped()).toEqual([]);
    expect(await app.scheduler.runCronNow()).toMatchObject({ due: [], through: '2024-05-08' });
  });

  it('catchup true starts after the newest existing run when the schedule never ran', async () => {
    const db = await f.fresh();
    await db.pool.query(`insert into l2flow.run (run_id, workflow_id, logical_date, business_date) values ('manual__2024-05-03', $1, '2024-05-03', '2024-05-02')`, [WF]);
    const app = f.app(cronFile({ catchup: true }), { now: clock('2024-05-05T12:00:00Z').now });
    await app.start();
    await leader(app);
    await until('two more runs', async () => (await f.runs()).length === 3);
    expect(await f.runs()).toEqual([{ d: '2024-05-03', by: 'manual' }, { d: '2024-05-04', by: 'scheduled' }, { d: '2024-05-05', by: 'scheduled' }]);
  });

  it('catchup false creates only the latest due date and records the others as skipped', async () => {
    await f.fresh();
    const app = f.app(cronFile({ catchup: false }), { now: clock('2024-05-05T05:00:00Z').now });
    await app.start();
    await leader(app);
    // 05:00 is before the 5th's 06:00 tick: the 4th is the latest due date.
    await until('the run of the latest due date', async () => (await f.runs()).length === 1);
    expect(await f.runs()).toEqual([{ d: '2024-05-04', by: 'scheduled' }]);
    expect(await f.skipped()).toEqual(['2024-05-01', '2024-05-02', '2024-05-03'].map((d) => ({ d, reason: 'catchup_false' })));
    expect(await skippedSummary(f.db().pool, WF)).toEqual({
      count: 3,
      byReason: { catchup_false: 3 },
      latest: ['2024-05-03', '2024-05-02', '2024-05-01'].map((logicalDate) => ({ logicalDate, reason: 'catchup_false' })),
    });
    const status = await runMain(['status'], { L2FLOW_CONN_DWH: f.db().uri });
    expect(status.out).toContain('skipped: 3 dates (catchup_false 3; newest 2024-05-03, 2024-05-02, 2024-05-01)');
    // A skipped date that gets a run by hand no longer counts as skipped.
    await f.db().pool.query(`insert into l2flow.run (run_id, workflow_id, logical_date, business_date) values ('manual__2024-05-02', $1, '2024-05-02', '2024-05-01')`, [WF]);
    expect((await skippedSummary(f.db().pool, WF)).count).toBe(2);
  });

  it('enabled false records every due date as skipped and creates none', async () => {
    await f.fresh();
    const c = clock('2024-05-03T12:00:00Z');
    const app = f.app(cronFile({ enabled: false, catchup: true }), { now: c.now });
    await app.start();
    await leader(app);
    await until('three skipped dates', async () => (await f.skipped()).length === 3);
    c.set('2024-05-04T12:00:00Z');
    await app.scheduler.runCronNow();
    expect(await f.runs()).toEqual([]);
    expect(await f.skipped()).toEqual(['2024-05-01', '2024-05-02', '2024-05-03', '2024-05-04'].map((d) => ({ d, reason: 'disabled' })));
  });

  it('creates nothing outside its start and end dates', async () => {
    await f.fresh();
    const app = f.app(cronFile({ catchup: true, startDate: '2024-05-02', endDate: '2024-05-04' }), { now: clock('2024-05-07T12:00:00Z').now });
    await app.start();
    await leader(app);
    await until('three runs', async () => (await f.runs()).length === 3);
    expect((await f.runs()).map((r) => r.d)).toEqual(['2024-05-02', '2024-05-03', '2024-05-04']);
    expect(await app.scheduler.runCronNow()).toMatchObject({ due: [] });
    expect(app.scheduler.nextCronAt()).toBeNull();
    expect(await f.skipped()).toEqual([]);
  });

  it('only the leader creates; a new leader continues without skipping or doubling a date', async () => {
    await f.fresh();
    const c = clock('2024-05-03T12:00:00Z');
    const first = f.app(cronFile({ catchup: true }), { now: c.now });
    await first.start();
    await leader(first);
    const second = f.app(cronFile({ catchup: true }), { now: c.now });
    await second.start();
    await until('three runs', async () => (await f.runs()).length === 3);
    expect(second.supervisor.isLeader()).toBe(false);
    expect(second.scheduler.nextCronAt()).toBeNull();
    // Two days pass while the leader stops (its timer waits at most an hour; the follower has none).
    c.set('2024-05-05T12:00:00Z');
    await first.stop();
    await leader(second);
    await until('five runs', async () => (await f.runs()).length === 5);
    const { rows } = await f.db().pool.query<{ d: string; n: number }>(
      `select to_char(logical_date, 'YYYY-MM-DD') as d, count(*)::int as n from l2flow.run group by 1 order by 1`,
    );
    expect(rows).toEqual(['2024-05-01', '2024-05-02', '2024-05-03', '2024-05-04', '2024-05-05'].map((d) => ({ d, n: 1 })));
    expect(await f.skipped()).toEqual([]);
    const state = await f.db().pool.query(`select schedule, last_logical_date::text as d from l2flow.schedule_state`);
    expect(state.rows).toEqual([{ schedule: 'cron', d: '2024-05-05' }]);
  });
});
