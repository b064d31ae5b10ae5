import { describe, expect, it } from 'vitest';
import type { App } from '../../src/runtime/app.js';
import { until } from '../helpers/process.js';
import { FLAG, useScheduleFixture } from '../helpers/schedule-fixture.js';

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
});
