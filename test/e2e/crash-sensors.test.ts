import { describe, expect, it } from 'vitest';
import { addDays } from '../../src/lib/dates.js';
import { crashHarness, D, expectRestored, expectSucceededOnce } from '../helpers/crash.js';
import { until } from '../helpers/process.js';

// Crash and resume, part 1: the sensors. `l2flow run` is killed with SIGKILL while a sensor waits, then started
// again; the new process restores the run from its snapshot. Timing comes from the database, never from sleeps.

const stepRow = async (h: Awaited<ReturnType<typeof crashHarness>>, runId: string, step: string) =>
  (await h.query<{ status: string; started_at: Date; finished_at: Date | null; took: number | null; waited: number; code: string | null }>(
    `select status, started_at, finished_at, extract(epoch from finished_at - started_at)::float8 as took,
            extract(epoch from clock_timestamp() - started_at)::float8 as waited, error ->> 'code' as code
       from l2flow.step where run_id = $1 and step = $2`,
    [runId, step],
  ))[0];

describe('crash and resume: sensors', () => {
  it('wait_for_l2_full_load: killed while parked; the restored sensor wakes on the flag and the run succeeds once', async () => {
    const h = await crashHarness();
    h.start();
    await h.trigger(D);
    const before = await h.waitRun('the run to park in wait_for_l2_full_load', D, (r) => r.current_step === 'wait_for_l2_full_load');
    const started = (await stepRow(h, before.run_id, 'wait_for_l2_full_load'))!.started_at;

    await h.kill();
    expect(await h.run(D)).toMatchObject({ status: 'running', load_id: null, current_step: 'wait_for_l2_full_load' });

    const second = h.start();
    await h.waitRun('the new process to take the run', D, (r) => r.owner !== before.owner);
    await until('the run to be restored', async () => second.logs.some((l) => l.includes('run restored from its snapshot')));
    await h.flag(D); // only now: the restored sensor, not the dead one, must see it
    expect((await h.finished(D)).status).toBe('success');

    expectRestored(second, before.run_id);
    await expectSucceededOnce(h, [D]);
    // The step kept its original start: it was resumed, not restarted.
    expect((await stepRow(h, before.run_id, 'wait_for_l2_full_load'))!.started_at).toEqual(started);
  });

  it('wait_for_success_end: killed while waiting for the previous day; the load id stays, both runs succeed once', async () => {
    const prev = addDays(D, -1);
    const h = await crashHarness({ startDate: prev });
    await h.flag(prev);
    await h.flag(D);
    h.start();
    await h.trigger(D);
    // The run of D waits for the run of D-1, which is not even queued yet.
    const before = await h.waitRun('the run to wait for the previous day', D, (r) => r.current_step === 'wait_for_success_end');
    expect(before.load_id).not.toBeNull();

    await h.kill();
    const second = h.start();
    await h.waitRun('the new process to take the run', D, (r) => r.owner !== before.owner);
    await h.trigger(prev);
    expect((await h.finished(prev)).status).toBe('success');
    expect((await h.finished(D)).status).toBe('success');

    expectRestored(second, before.run_id);
    await expectSucceededOnce(h, [prev, D], { loadIds: { [D]: before.load_id } });
  });

  it('a sensor deadline survives a restart: killed 3 s into a 6 s timeout, the run fails about 6 s after the step started', async () => {
    const TIMEOUT_S = 6;
    const h = await crashHarness({ flagTimeoutSeconds: TIMEOUT_S });
    h.start();
    await h.trigger(D);
    const before = await h.waitRun('the run to park in wait_for_l2_full_load', D, (r) => r.current_step === 'wait_for_l2_full_load');
    await until('the sensor to have waited 3 s', async () => (await stepRow(h, before.run_id, 'wait_for_l2_full_load'))!.waited >= 3, 10_000, 20);

    await h.kill();
    h.start();
    const killedAfter = (await stepRow(h, before.run_id, 'wait_for_l2_full_load'))!.waited;
    expect(killedAfter).toBeLessThan(TIMEOUT_S - 1); // restarted well before the deadline

    const done = await h.finished(D, 15_000);
    expect(done.status).toBe('failed');
    expect(done.error?.code).toBe('SENSOR_TIMEOUT');
    // The message counts the whole wait from the step's start, not only the part after the restart.
    expect(done.error?.message).toMatch(/after waiting [67] s/);
    const step = (await stepRow(h, before.run_id, 'wait_for_l2_full_load'))!;
    expect(step).toMatchObject({ status: 'failed', code: 'SENSOR_TIMEOUT' });
    // The deadline is absolute (step start + 6 s): a timeout re-armed by the restart would end at ≥ 3 + 6 = 9 s.
    expect(step.took).toBeGreaterThanOrEqual(TIMEOUT_S - 0.01);
    expect(step.took).toBeLessThan(TIMEOUT_S + 2);
    expect(await h.query(`select count(*)::int as n from l2flow.email_outbox where run_id = $1`, [before.run_id])).toEqual([{ n: 1 }]);
    expect(await h.query(`select count(*)::int as n from md.session_log`)).toEqual([{ n: 0 }]); // no load id, no md session
  });
});
