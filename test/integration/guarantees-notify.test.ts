import { firstValueFrom, filter, timeout } from 'rxjs';
import { describe, expect, it } from 'vitest';
import { addDays } from '../../src/lib/dates.js';
import type { SensorCheck } from '../../src/runtime/app.js';
import { useFixture, type Fixture } from '../helpers/app-fixture.js';
import { runMain, until } from '../helpers/process.js';

// Each NOTIFY-driven path proven alone: the poll that would otherwise cover it is set to 60 s, so whatever happens
// within a few seconds happened through the notification. Bounds are "long before the poll could have fired",
// never a number of milliseconds.

let fx: Fixture;
useFixture((f) => (fx = f));

/** No claim round (and so no stale-cancel check) and no mail poll can fire within a test. */
const POLLS_OFF = { claimIntervalMs: 60_000, mailPollIntervalMs: 60_000 };
/** Far below the 60 s polls, far above what the notification path needs on a busy machine. */
const WELL_BEFORE_POLL_MS = 10_000;
const GATED = 'do $$ begin while not (select open from public.gate) loop perform pg_sleep(0.02); end loop; end $$';

const runId = (d: string) => `manual__${d}`;
const currentStep = async (d: string) => (await fx.run(d))?.current_step ?? null;

describe('NOTIFY paths, with the polls that back them at 60 s', () => {
  it('claim: a run queued while the runtime waits starts through NOTIFY, not the 60 s claim round', async () => {
    const D = '2025-01-10';
    const app = await fx.startApp(D, { app: POLLS_OFF });
    const started = firstValueFrom(app.supervisor.events$.pipe(filter((e) => e.type === 'started'), timeout(WELL_BEFORE_POLL_MS)));
    // The start-up claim round is over: anything queued from now on can only be seen by a notification or by the
    // claim round 60 s from now.
    await fx.trigger(D);
    const ev = await started;
    expect(ev).toMatchObject({ runId: runId(D), logicalDate: D });
    expect(app.supervisor.activeRunIds()).toEqual([runId(D)]);
    expect((await fx.run(D))?.status).toBe('running');
  });

  it("mail: a failed run's mail is delivered at the dispatcher's kick, not at its 60 s poll", async () => {
    const D = '2025-01-11';
    fx.answer((res) => res.writeHead(400, { 'content-type': 'text/plain' }).end('calc_rows rejected'));
    await fx.startApp(D, { app: POLLS_OFF });
    await fx.trigger(D, { flag: true });
    const run = await fx.finished(D);
    expect(run.status).toBe('failed');
    // The dispatcher polled once at start-up, before this run existed; its next poll is 60 s away.
    await fx.smtp.waitForMessages(1, WELL_BEFORE_POLL_MS);
    expect(fx.mails(D)).toHaveLength(1);
    expect(fx.mails(D)[0]!.subject).toContain('send_flg_to_sap');
  });

  it('cancel: with no claim round (the stale-run check) in reach, `l2flow cancel` stops the run by NOTIFY alone', async () => {
    const D = '2025-01-12';
    await fx.db.pool.query(`create table if not exists public.gate (open boolean not null); delete from public.gate; insert into public.gate values (false)`);
    const app = await fx.startApp(D, { app: POLLS_OFF, file: { children: { wf_data_preparation_for_reports: { kind: 'sql', statement: GATED } } } });
    const childRunning = async () =>
      (await fx.db.pool.query(`select count(*)::int as n from pg_stat_activity
        where datname = current_database() and state = 'active' and query like 'do $$ begin while not%' and pid <> pg_backend_pid()`)).rows[0].n as number;
    await fx.trigger(D, { flag: true });
    await until('the reports child to run on the server', async () => (await childRunning()) === 1);
    expect(app.supervisor.activeRunIds()).toEqual([runId(D)]);

    const released = firstValueFrom(app.supervisor.events$.pipe(filter((e) => e.runId === runId(D) && e.type === 'finished'), timeout(WELL_BEFORE_POLL_MS)));
    const r = await runMain(['cancel', '--date', D], { L2FLOW_CONN_DWH: fx.dwhUri });
    expect(r, r.err).toMatchObject({ code: 0 });
    expect(await released).toMatchObject({ status: 'cancelled' });
    expect(app.supervisor.activeRunIds()).toEqual([]);
    expect(await childRunning()).toBe(0);
    const run = (await fx.run(D))!;
    expect(run.status).toBe('cancelled');
    const steps = (await fx.db.pool.query(`select step, status from l2flow.step where run_id = $1 and status <> 'success'`, [run.run_id])).rows;
    expect(steps).toContainEqual({ step: 'run_wf_data_preparation_for_reports', status: 'cancelled' });
  });

  describe('the flag sensor with no NOTIFY (the flag table trigger disabled)', () => {
    async function withoutFlagTrigger(fn: () => Promise<void>): Promise<void> {
      await fx.db.pool.query('alter table md.dwh_flag disable trigger l2flow_dwh_flag_notify');
      try {
        await fn();
      } finally {
        await fx.db.pool.query('alter table md.dwh_flag enable trigger l2flow_dwh_flag_notify');
      }
    }

    /** Start the app, queue D, and wait until its sensor made its first (register) check and parked. */
    async function parked(D: string, env: Record<string, string>) {
      const checks: SensorCheck[] = [];
      const app = await fx.startApp(D, { app: POLLS_OFF, env });
      app.sensorChecks$.pipe(filter((c) => c.sensor === 'wait_for_l2_full_load')).subscribe((c) => checks.push(c));
      await fx.trigger(D);
      await until('the flag sensor to check once and wait', async () =>
        checks.some((c) => c.reason === 'register' && c.keys.includes(addDays(D, -1))) && (await currentStep(D)) === 'wait_for_l2_full_load');
      return checks;
    }

    it('the poke interval set in the config (1 s) reaches the sensor: its fallback poll finds the flag', async () => {
      const D = '2025-01-13';
      await withoutFlagTrigger(async () => {
        const checks = await parked(D, { L2FLOW_FLAG_POKE_INTERVAL_SECONDS: '1' });
        await fx.insertFlag(addDays(D, -1));
        await until('the run to leave wait_for_l2_full_load', async () => (await currentStep(D)) !== 'wait_for_l2_full_load', WELL_BEFORE_POLL_MS);
        const found = checks.find((c) => c.satisfied.includes(addDays(D, -1)));
        expect(found?.reason).toBe('poll');
      });
      expect((await fx.finished(D)).status).toBe('success');
    });

    it('with the default 60 s poke and no NOTIFY, nothing wakes the sensor within seconds (what woke it above was the poll)', async () => {
      const D = '2025-01-14';
      await withoutFlagTrigger(async () => {
        const checks = await parked(D, {});
        const before = checks.length;
        await fx.insertFlag(addDays(D, -1));
        // Long enough for a 1 s poke to have fired several times (the test above), far below 60 s.
        await new Promise((r) => setTimeout(r, 4_000));
        expect(await currentStep(D)).toBe('wait_for_l2_full_load');
        expect(checks.slice(before)).toEqual([]);
      });
    });
  });
});
