import { performance } from 'node:perf_hooks';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { pino } from 'pino';
import { NEVER, Subject, firstValueFrom, timeout } from 'rxjs';
import { DEFAULTS } from '../../src/runtime/config.js';
import { createNotificationHub, type NotificationHub } from '../../src/runtime/notification-hub.js';
import { createCheckRecorder, createConditionWaiter } from '../../src/services/sensors/index.js';
import { StepError } from '../../src/lib/errors.js';
import { addDays } from '../../src/lib/dates.js';
import { DWH_FLAG_CHANNEL, RUN_CHANNEL, createFlagSensor, createPreviousRunSensor, type SensorCheck } from '../../src/services/sensors/index.js';
import type { SensorInput } from '../../src/services/types.js';
import { createTestDb, type TestDb } from '../helpers/db.js';
import { until } from '../helpers/process.js';

type LogLine = { level: number; msg: string } & Record<string, unknown>;
const FLAG = DEFAULTS.flagSensor.flagCode;
const WF = 'WF_MAIN_DATASETS_LOAD_L2_TO_L2';
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const lines: LogLine[] = [];
const logger = pino({ level: 'debug' }, { write: (s: string) => void lines.push(JSON.parse(s) as LogLine) });

let dayCounter = 0;
const nextDate = () => addDays('2030-01-01', dayCounter++);

function input(businessDate: string, deadlineInMs = 10_000): SensorInput {
  const logicalDate = addDays(businessDate, 1);
  return { runId: `run-${logicalDate}`, workflowId: WF, logicalDate, businessDate, attempt: 1, loadId: null, deadline: Date.now() + deadlineInMs };
}

/** Whether a promise settled within `ms`, without letting its rejection go unhandled. */
async function stateAfter(p: Promise<unknown>, ms: number): Promise<'pending' | 'resolved' | 'rejected'> {
  return Promise.race([p.then(() => 'resolved' as const, () => 'rejected' as const), sleep(ms).then(() => 'pending' as const)]);
}

async function rejection(p: Promise<unknown>): Promise<StepError> {
  const err = await p.then(() => null, (e: unknown) => e);
  expect(err).toBeInstanceOf(StepError);
  return err as StepError;
}

/** A pool whose flag queries are counted with the number of dates each asked about. */
function countingPool(pool: pg.Pool, calls: number[]): pg.Pool {
  return {
    // A named statement { name, text, values } whose second value is one key (a string) or several (an array): a flag
    // check's dates, the check log's keys. Each call is counted with its number of keys.
    query: (q: pg.QueryConfig<[string, string | string[]]>) => {
      const dates = q.values![1];
      calls.push(Array.isArray(dates) ? dates.length : 1);
      return pool.query(q);
    },
  } as unknown as pg.Pool;
}

describe('sensors', () => {
  let db: TestDb;
  let hub: NotificationHub;
  const signal = new AbortController().signal;
  const flagSensor = (o: Partial<Parameters<typeof createFlagSensor>[0]> = {}) =>
    createFlagSensor({
      pool: db.pool, dwh: db.pool, notifications$: hub.notifications$, reconnects$: hub.connected$, logger,
      flagTable: DEFAULTS.flagSensor.flagTable, flagCode: DEFAULTS.flagSensor.flagCode, pokeIntervalMs: DEFAULTS.flagSensor.pokeIntervalMs, ...o,
    });
  const insertFlag = (date: string, code = FLAG, table = 'md.dwh_flag') =>
    db.pool.query(`insert into ${table} (flag_cd, bussines_date) values ($1, $2)`, [code, date]);

  beforeAll(async () => {
    db = await createTestDb();
    hub = createNotificationHub({ connectionString: db.uri, channels: [DWH_FLAG_CHANNEL, RUN_CHANNEL], logger });
    await hub.start();
  });
  afterAll(async () => {
    await hub?.stop();
    await db?.drop();
  });

  it('a flag inserted after the wait started is seen through NOTIFY, long before the 60 s poll', async () => {
    const d = nextDate();
    const p = flagSensor()(input(d), signal);
    await sleep(30);
    await insertFlag(d);
    const committed = performance.now();
    const out = await p;
    expect(performance.now() - committed).toBeLessThan(DEFAULTS.flagSensor.pokeIntervalMs);
    expect(out.checks).toBe(2); // at registration, then on the hint: no poll ran
    expect(Number.isNaN(Date.parse(out.satisfiedAt))).toBe(false);
  });

  it('onCheck reports the registration check with the key, then the check that finds the flag, after its waiter went on', async () => {
    const d = nextDate();
    const checks: SensorCheck[] = [];
    const before = lines.length;
    // A throwing listener is logged and ignored: the wait goes on as if it were not there.
    const onCheck = (e: SensorCheck) => {
      checks.push(e);
      throw new Error('listener failed');
    };
    const p = flagSensor({ onCheck })(input(d), signal);
    await sleep(30);
    expect(checks).toEqual([
      { sensor: 'wait_for_l2_full_load', keys: [d], satisfied: [], requestedAt: expect.any(Number), startedAt: expect.any(Number), finishedAt: expect.any(Number), ok: true, reason: 'register' },
    ]);
    await insertFlag(d);
    expect((await p).checks).toBe(2);
    // The released wait went on first: the bookkeeping of a check never holds a run up.
    expect(checks).toHaveLength(1);
    await new Promise((r) => setImmediate(r));
    expect(checks).toHaveLength(2);
    expect(checks[1]).toMatchObject({ sensor: 'wait_for_l2_full_load', keys: [d], satisfied: [d], ok: true, reason: 'hint' });
    for (const c of checks) expect(c.finishedAt).toBeGreaterThanOrEqual(c.startedAt);
    for (const c of checks) expect(c.startedAt).toBeGreaterThanOrEqual(c.requestedAt);
    expect(checks[1]!.startedAt).toBeGreaterThanOrEqual(checks[0]!.finishedAt);
    expect(lines.slice(before).filter((l) => /onCheck listener threw/.test(l.msg))).toHaveLength(1); // rate-limited
  });

  it('the flag checks are planned once per connection, not at every check (their generic plans are kept)', async () => {
    // One connection, so every check runs the same prepared statements; PostgreSQL 14+ counts their plans.
    const one = new pg.Pool({ connectionString: db.uri, max: 1, application_name: 'l2flow-test-plans' });
    try {
      const sensor = flagSensor({ dwh: one });
      const dates = Array.from({ length: 24 }, () => nextDate());
      for (const d of dates) await insertFlag(d);
      // A check of one date (a new run's registration) …
      for (const d of dates.slice(0, 12)) expect((await sensor(input(d), signal)).checks).toBe(1);
      // … and of several at once (waits registered in the same tick share one check).
      for (let i = 12; i < 24; i += 2) {
        const both = await Promise.all([sensor(input(dates[i]!), signal), sensor(input(dates[i + 1]!), signal)]);
        expect(both.map((o) => o.checks)).toEqual([1, 1]);
      }
      const { rows } = await one.query<{ statement: string; custom_plans: string; generic_plans: string }>(
        `select statement, custom_plans, generic_plans from pg_prepared_statements where statement like '%bussines_date = %' order by statement`);
      expect(rows.map((r) => [/any\(/.test(r.statement) ? 'dates' : 'one date', Number(r.custom_plans) + Number(r.generic_plans)])).toEqual([
        ['one date', 12],
        ['dates', 6],
      ]);
      // PostgreSQL tries five custom plans, then keeps the generic one when it is no dearer.
      for (const r of rows) expect(Number(r.custom_plans)).toBeLessThanOrEqual(5);
      expect(Number(rows[0]!.generic_plans)).toBeGreaterThanOrEqual(12 - 5);
    } finally {
      await one.end();
    }
  });

  it('a flag present before the wait is seen at once', async () => {
    const d = nextDate();
    await insertFlag(d);
    const t0 = performance.now();
    const out = await flagSensor()(input(d), signal);
    expect(performance.now() - t0).toBeLessThan(DEFAULTS.flagSensor.pokeIntervalMs);
    expect(out.checks).toBe(1); // the registration's check: no poll, no notification
  });

  it('a flag written twice (flag tables rarely have a key) releases its waiters once, and names the date once', async () => {
    const [d, other] = [nextDate(), nextDate()];
    await insertFlag(d);
    await insertFlag(d);
    await sleep(50); // their NOTIFYs are delivered before the sensor listens: only its registration check runs
    const checks: SensorCheck[] = [];
    const sensor = flagSensor({ onCheck: (c) => checks.push(c) });
    const ac = new AbortController();
    const waits = [sensor(input(d), signal), sensor(input(d), signal), sensor(input(other), ac.signal)];
    const [a, b] = await Promise.all(waits.slice(0, 2));
    expect([a!.checks, b!.checks]).toEqual([1, 1]);
    expect(await stateAfter(waits[2]!, 100)).toBe('pending');
    // The three waits registered in the same tick share one check, which found the date once.
    expect(checks).toHaveLength(1);
    expect(checks[0]).toMatchObject({ keys: expect.arrayContaining([d, other]), satisfied: [d], ok: true });
    ac.abort();
    expect((await rejection(waits[2]!)).code).toBe('ABORTED');
  });

  it('a flag for another date or another flag code does not satisfy the wait', async () => {
    const d = nextDate();
    const ac = new AbortController();
    const p = flagSensor()(input(d), ac.signal);
    await insertFlag(addDays(d, 1));
    await insertFlag(d, 'l1_to_l2_load_failed');
    expect(await stateAfter(p, 300)).toBe('pending');
    ac.abort();
    expect((await rejection(p)).code).toBe('ABORTED');
  });

  it('a flag that arrives by UPDATE is seen', async () => {
    const d = nextDate();
    await insertFlag(d, 'not_yet');
    const p = flagSensor()(input(d), signal);
    await sleep(30);
    await db.pool.query(`update md.dwh_flag set flag_cd = $1 where flag_cd = 'not_yet' and bussines_date = $2`, [FLAG, d]);
    expect(await stateAfter(p, 100)).toBe('resolved');
  });

  it('a flag inserted while the listener is down is seen right after the reconnect, not a poll later', async () => {
    const d = nextDate();
    const admin = new pg.Client({ connectionString: db.uri.replace(/\/[^/]*$/, '/postgres') });
    await admin.connect();
    const held = await db.pool.connect(); // an open connection keeps working while new ones are refused
    const allow = (yes: boolean) => admin.query(`alter database ${db.name} allow_connections ${yes}`);
    try {
      const p = flagSensor()(input(d, 20_000), signal);
      await sleep(30);
      const reconnected = firstValueFrom(hub.connected$.pipe(timeout(10_000)));
      reconnected.catch(() => undefined);
      // Refusing new connections holds the listener down long enough to insert during the gap.
      await allow(false);
      await held.query(`select pg_terminate_backend(pid) from pg_stat_activity
        where application_name = 'l2flow-listener' and datname = current_database() and pid <> pg_backend_pid()`);
      const until = Date.now() + 2_000;
      while (hub.isConnected() && Date.now() < until) await sleep(2);
      expect(hub.isConnected()).toBe(false);
      await held.query(`insert into md.dwh_flag (flag_cd, bussines_date) values ($1, $2)`, [FLAG, d]);
      expect(await stateAfter(p, 300)).toBe('pending');
      await allow(true);
      await reconnected;
      const t = performance.now();
      await p;
      expect(performance.now() - t).toBeLessThan(DEFAULTS.flagSensor.pokeIntervalMs); // the reconnect's check, not a poll
    } finally {
      await allow(true);
      held.release();
      await admin.end();
    }
  });

  it('without notifications (no trigger on the table) the fallback poll finds the flag', async () => {
    await db.pool.query('create table md.quiet_flag (like md.dwh_flag including defaults)');
    const d = nextDate();
    const p = flagSensor({ flagTable: 'md.quiet_flag', pokeIntervalMs: 150 })(input(d), signal);
    await sleep(30);
    await insertFlag(d, FLAG, 'md.quiet_flag');
    const out = await p;
    expect(out.checks).toBeGreaterThanOrEqual(2); // the registration's check, then the poll(s) until the flag
  });

  it('fails with SENSOR_TIMEOUT at about the deadline, naming the sensor, the date and the wait', async () => {
    const d = nextDate();
    const t0 = performance.now();
    const err = await rejection(flagSensor()(input(d, 300), signal));
    const took = performance.now() - t0;
    expect(err.code).toBe('SENSOR_TIMEOUT');
    expect(took).toBeGreaterThanOrEqual(295);
    expect(took).toBeLessThan(5_000); // the deadline's last check, not the next 60 s poll nor its 5 s grace
    expect(err.message).toMatch(/^wait_for_l2_full_load timed out/);
    expect(err.message).toContain(`business date ${d}`);
    expect(err.message).toMatch(/after waiting \d+ ms/);
    expect(err.message).toContain(`logical date ${addDays(d, 1)}`);
  });

  it('a sensor resumed after a restart reports the whole wait since the step started, not since the restart', async () => {
    const d = nextDate();
    const resumed = { ...input(d, 200), startedAt: Date.now() - 3_000 };
    const err = await rejection(flagSensor()(resumed, signal));
    expect(err.code).toBe('SENSOR_TIMEOUT');
    expect(err.message).toMatch(/after waiting 3 s/);
    expect(err.details?.waitedMs).toBeGreaterThanOrEqual(3_000);
  });

  it('a deadline already past fails at once after one last check, which can still succeed', async () => {
    const d = nextDate();
    const t0 = performance.now();
    const late = await rejection(flagSensor()(input(d, -1_000), signal));
    expect(late.code).toBe('SENSOR_TIMEOUT');
    expect(late.details?.checks).toBe(1); // one last check, then at once: not after its 5 s grace
    expect(performance.now() - t0).toBeLessThan(5_000);
    await insertFlag(d);
    expect((await flagSensor()(input(d, -1_000), signal)).checks).toBe(1);
  });

  it('abort rejects with ABORTED at once, before or during the wait', async () => {
    const ac = new AbortController();
    const p = flagSensor()(input(nextDate()), ac.signal);
    await sleep(20);
    const t0 = performance.now();
    ac.abort(new Error('run cancelled'));
    expect((await rejection(p)).code).toBe('ABORTED');
    expect(performance.now() - t0).toBeLessThan(DEFAULTS.flagSensor.pokeIntervalMs); // at once, not at a poll
    expect((await rejection(flagSensor()(input(nextDate()), ac.signal))).code).toBe('ABORTED');
  });

  it('200 waiters on different dates cost ONE query per poll interval, and one burst of NOTIFYs a few', async () => {
    const calls: number[] = [];
    const sensor = flagSensor({ dwh: countingPool(db.pool, calls), pokeIntervalMs: 100 });
    const dates = Array.from({ length: 200 }, nextDate);
    const all = Promise.all(dates.map((d) => sensor(input(d), signal)));
    await sleep(1_050);
    expect(calls.length).toBeGreaterThanOrEqual(9); // 1 at registration + ~10 polls
    expect(calls.length).toBeLessThanOrEqual(13);
    expect(calls.every((n) => n === 200)).toBe(true);
    calls.length = 0;
    await db.pool.query(`insert into md.dwh_flag (flag_cd, bussines_date) select $1, unnest($2::date[])`, [FLAG, dates]);
    await all;
    expect(calls.length).toBeLessThanOrEqual(5);
  });

  it('ignores malformed NOTIFY payloads, with a bounded number of warnings', async () => {
    const calls: number[] = [];
    const d = nextDate();
    const p = flagSensor({ dwh: countingPool(db.pool, calls) })(input(d), signal);
    await sleep(30);
    const bad = [
      'not json',
      'x'.repeat(7_000),
      JSON.stringify({ flag_cd: FLAG, business_date: d, pad: 'x'.repeat(7_000) }),
      JSON.stringify({ flag_cd: 1, business_date: 2 }),
      JSON.stringify({ flag_cd: FLAG, business_date: 20300101 }),
      JSON.stringify({ flag_cd: FLAG, business_date: null }),
      JSON.stringify({ flag_cd: FLAG }),
      'null',
      '[]',
      '"2030-01-01"',
    ];
    for (let i = 0; i < 10; i++) for (const payload of bad) await db.pool.query('select pg_notify($1, $2)', [DWH_FLAG_CHANNEL, payload]);
    expect(await stateAfter(p, 150)).toBe('pending');
    expect(calls).toEqual([1]); // nothing but the registration check
    const warnings = lines.filter((l) => l.level >= 40 && l.channel === DWH_FLAG_CHANNEL);
    expect(warnings.length).toBe(1);
    await insertFlag(d);
    expect(await stateAfter(p, 100)).toBe('resolved');
  });

  it('a failing check query logs a rate-limited warning and keeps waiting until the deadline', async () => {
    const before = lines.length;
    const err = await rejection(flagSensor({ flagTable: 'md.missing_flag', pokeIntervalMs: 50 })(input(nextDate(), 400), signal));
    expect(err.code).toBe('SENSOR_TIMEOUT');
    expect(err.message).toMatch(/the last check failed: relation "md.missing_flag" does not exist/);
    expect((err.details?.checks as number) >= 5).toBe(true);
    expect(lines.slice(before).filter((l) => /check query failed/.test(l.msg))).toHaveLength(1);
  });

  describe('previous-run sensor', () => {
    const runSensor = (policy: { whenMissing?: 'wait' | 'pass'; whenFailed?: 'wait' | 'fail' } = {}) =>
      createPreviousRunSensor({
        pool: db.pool, notifications$: hub.notifications$, reconnects$: hub.connected$, startDate: '2023-12-22', logger,
        executionDeltaDays: DEFAULTS.successEndSensor.executionDeltaDays, pokeIntervalMs: DEFAULTS.successEndSensor.pokeIntervalMs,
        whenMissing: policy.whenMissing ?? DEFAULTS.successEndSensor.whenMissing,
        whenFailed: policy.whenFailed ?? DEFAULTS.successEndSensor.whenFailed,
        timezone: DEFAULTS.timezone,
      });
    const insertRun = (workflowId: string, logicalDate: string, status: string) =>
      db.pool.query(`insert into l2flow.run (run_id, workflow_id, logical_date, business_date, status) values ($1, $2, $3, $4, $5)`, [
        `${workflowId}-${logicalDate}`,
        workflowId,
        logicalDate,
        addDays(logicalDate, -1),
        status,
      ]);

    it('passes at once when D-1 falls before the start date', async () => {
      const out = await runSensor()({ ...input('2023-12-21'), logicalDate: '2023-12-22' }, signal);
      expect(out).toMatchObject({ skipped: true, checks: 0, previousLogicalDate: '2023-12-21' });
    });

    it('waits for the D-1 run of the same workflow to succeed, woken by the run-table trigger', async () => {
      const run = input(nextDate()); // logicalDate = businessDate + 1, so D-1 is the business date
      await insertRun(WF, run.businessDate, 'running');
      await insertRun('OTHER_WF', run.businessDate, 'success');
      const p = runSensor()(run, signal);
      expect(await stateAfter(p, 200)).toBe('pending');
      await db.pool.query(`update l2flow.run set status = 'success' where workflow_id = $1 and logical_date = $2`, [WF, run.businessDate]);
      const t = performance.now();
      const out = await p;
      expect(performance.now() - t).toBeLessThan(DEFAULTS.successEndSensor.pokeIntervalMs);
      // Registration, then the run-table trigger's hint: no poll ran.
      expect(out).toMatchObject({ skipped: false, checks: 2, previousLogicalDate: run.businessDate });
    });

    it("the waited-for run's step changes cost no check: only its end wakes the sensor", async () => {
      const run = input(nextDate());
      await insertRun(WF, run.businessDate, 'running');
      const p = runSensor()(run, signal);
      expect(await stateAfter(p, 200)).toBe('pending'); // the first check found it running
      // Five step changes of D-1, each committed alone (a NOTIFY each), all delivered before it ends.
      const steps = ['get_load_id', 'workflow_registration', 'wait_for_success_end', 'run_sys_kill_all_session_pg', 'end'];
      const delivered = new Promise<void>((resolve) => {
        let n = 0;
        const sub = hub.notifications$.subscribe((x) => {
          const pl = x.payload as { logical_date?: string; current_step?: string };
          if (x.channel === RUN_CHANNEL && pl.logical_date === run.businessDate && steps.includes(pl.current_step ?? '') && ++n === steps.length) {
            sub.unsubscribe();
            resolve();
          }
        });
      });
      for (const step of steps) {
        await db.pool.query(`update l2flow.run set current_step = $3 where workflow_id = $1 and logical_date = $2`, [WF, run.businessDate, step]);
      }
      await delivered;
      await db.pool.query(`update l2flow.run set status = 'success' where workflow_id = $1 and logical_date = $2`, [WF, run.businessDate]);
      // The first check and the one its success woke: none for the five step changes.
      expect(await p).toMatchObject({ skipped: false, checks: 2 });
    });

    it('steps back over month ends and leap days in calendar terms, and refuses a date that is none', async () => {
      await insertRun(WF, '2024-02-29', 'success');
      const out = await runSensor()({ ...input('2024-02-29'), logicalDate: '2024-03-01' }, signal);
      expect(out).toMatchObject({ previousLogicalDate: '2024-02-29', skipped: false, checks: 1 });
      const err = await rejection(runSensor()({ ...input('2024-02-29'), logicalDate: '01.03.2024' }, signal));
      expect(err.message).toMatch(/logicalDate "01.03.2024" is not a calendar date/);
    });

    it('passes at once when D-1 already succeeded', async () => {
      const run = input(nextDate());
      await insertRun(WF, run.businessDate, 'success');
      expect(await runSensor()(run, signal)).toMatchObject({ skipped: false, checks: 1 });
    });

    it('whenMissing: wait (default) keeps waiting for a date with no run; pass passes at once', async () => {
      const run = input(nextDate());
      const ac = new AbortController();
      const waiting = runSensor()(run, ac.signal);
      expect(await stateAfter(waiting, 200)).toBe('pending');
      ac.abort();
      expect((await rejection(waiting)).code).toBe('ABORTED');
      expect(await runSensor({ whenMissing: 'pass' })(run, signal)).toMatchObject({ skipped: true, missing: true, previousLogicalDate: run.businessDate });
    });

    it('whenFailed: wait (default) waits behind a failed D-1 until it is re-run to success; fail fails at once naming it', async () => {
      const run = input(nextDate());
      await insertRun(WF, run.businessDate, 'failed');
      await db.pool.query(`update l2flow.run set finished_at = '2030-06-01T21:14:00Z',
          error = '{"code":"SAP_HTTP_ERROR","message":"send_flg_to_sap: SAP answered 400","details":{"step":"send_flg_to_sap"}}'
        where workflow_id = $1 and logical_date = $2`, [WF, run.businessDate]);
      const err = await rejection(runSensor({ whenFailed: 'fail' })(run, signal));
      expect(err.code).toBe('PREVIOUS_RUN_FAILED');
      // 21:14 UTC is 02:14 the next day in Asia/Tashkent.
      expect(err.message).toContain(`the run of ${run.businessDate}, failed at send_flg_to_sap 2030-06-02 02:14:00 (SAP_HTTP_ERROR: SAP answered 400)`);
      expect(err.message).toContain(`logical date ${run.logicalDate}`);
      const waiting = runSensor()(run, signal);
      expect(await stateAfter(waiting, 200)).toBe('pending');
      await db.pool.query(`update l2flow.run set status = 'success' where workflow_id = $1 and logical_date = $2`, [WF, run.businessDate]);
      expect(await waiting).toMatchObject({ skipped: false, previousLogicalDate: run.businessDate });
    });
  });
});

describe('condition waiter', () => {
  it('never runs checks concurrently: hints during a check coalesce into one re-run', async () => {
    let active = 0;
    let maxActive = 0;
    const queried: string[][] = [];
    const hints$ = new Subject<string[]>();
    const waiter = createConditionWaiter<string>({
      name: 'test',
      check: async (keys) => {
        queried.push(keys);
        maxActive = Math.max(maxActive, ++active);
        await sleep(40);
        active -= 1;
        return new Set<string>(keys.filter((k) => k === 'b'));
      },
      hints$,
      reconnects$: NEVER,
      pollIntervalMs: 60_000,
      logger,
    });
    const a = waiter.wait('a', { deadline: Infinity, signal: new AbortController().signal });
    const b = waiter.wait('b', { deadline: Infinity, signal: new AbortController().signal });
    await sleep(10);
    for (let i = 0; i < 100; i++) hints$.next(['a', 'b', 'unknown']);
    await b;
    expect(maxActive).toBe(1);
    expect(queried).toEqual([['a', 'b'], ['a']]); // b held at the first check; a is re-checked once
    expect(waiter.waiting()).toBe(1);
    waiter.close();
    expect((await rejection(a)).code).toBe('ABORTED');
  });

  it('leaves no timers behind once nothing waits', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'setInterval', 'clearInterval'] });
    try {
      const waiter = createConditionWaiter<string>({
        name: 'test',
        check: async () => new Set<string>(),
        hints$: NEVER,
        reconnects$: NEVER,
        pollIntervalMs: 10,
        logger,
      });
      const ac = new AbortController();
      const ps = ['a', 'b', 'c'].map((k) => waiter.wait(k, { deadline: Date.now() + 60_000, signal: ac.signal }).catch(() => undefined));
      expect(vi.getTimerCount()).toBe(4); // three deadlines and one shared poll
      ac.abort();
      await Promise.all(ps);
      expect(waiter.waiting()).toBe(0);
      expect(vi.getTimerCount()).toBe(0);
    } finally {
      vi.useRealTimers();
    }
  });
});

describe('the sensor check log', () => {
  let db: TestDb;
  beforeAll(async () => {
    db = await createTestDb();
  });
  afterAll(async () => {
    await db?.drop();
  });

  it('records the keys still waited on, a second later in one statement; a key that held meanwhile, or a check whose every key held, writes nothing', async () => {
    // One connection: the recorder's inserts run in the order they were sent.
    const pool = new pg.Pool({ connectionString: db.uri, max: 1 });
    try {
      const record = createCheckRecorder({ pool, logger: pino({ level: 'silent' }) });
      const check = (keys: string[], satisfied: string[], ok = true): SensorCheck =>
        ({ sensor: 'wait_for_l2_full_load', keys, satisfied, requestedAt: performance.now(), startedAt: performance.now(), finishedAt: performance.now(), ok, reason: 'hint' });
      record(check(['2024-01-01'], ['2024-01-01'])); // held: nothing to record
      record(check(['2024-01-02', '2024-01-03'], ['2024-01-02'])); // one held, one still waited on
      record(check(['2024-01-04'], [], false)); // a failed check: recorded as failed
      record(check(['2024-01-05'], [])); // waited on, then held before it was written: never written
      record(check(['2024-01-05'], ['2024-01-05']));
      const rows = async () => (await db.pool.query<{ key: string; ok: boolean }>(`select key, ok from l2flow.sensor_check order by key`)).rows;
      await until('the last record', async () => (await rows()).some((r) => r.key === '2024-01-04'));
      expect(await rows()).toEqual([{ key: '2024-01-03', ok: true }, { key: '2024-01-04', ok: false }]);
    } finally {
      await pool.end();
    }
  });

  it('writes each key with the time of its own latest check in one statement; a hint after a poll keeps the poll as polled_at', async () => {
    const pool = new pg.Pool({ connectionString: db.uri, max: 1 });
    const statements: number[] = [];
    try {
      const sensor = 'wait_for_l2_full_load';
      const record = createCheckRecorder({ pool: countingPool(pool, statements), logger: pino({ level: 'silent' }), delayMs: 60_000 });
      const check = (keys: string[], reason: SensorCheck['reason'], ok = true): SensorCheck => {
        const at = performance.now();
        return { sensor, keys, satisfied: [], requestedAt: at, startedAt: at, finishedAt: at, ok, reason };
      };
      const wall = async () => {
        const before = Date.now();
        await sleep(15); // distinct millisecond times for each check below
        return before;
      };
      const polls = Array.from({ length: 300 }, (_, i) => `2030-${String((i % 12) + 1).padStart(2, '0')}-${String((i % 28) + 1).padStart(2, '0')}:${i}`);
      const t0 = await wall();
      record(check(polls, 'poll'));
      const t1 = await wall();
      record(check([polls[1]!, polls[2]!], 'hint')); // notified meanwhile, still not there
      const t2 = await wall();
      record(check(['new-run'], 'register'));
      const t3 = await wall();
      record(check([polls[2]!], 'hint', false)); // a second hint, whose query failed
      await record.flush();
      expect(statements).toEqual([301]); // one statement with every key
      const { rows } = await db.pool.query<{ key: string; checked_at: Date; polled_at: Date | null; ok: boolean }>(
        `select key, checked_at, polled_at, ok from l2flow.sensor_check where sensor = $1 and key = any($2)`, [sensor, [...polls, 'new-run']]);
      const byKey = new Map(rows.map((r) => [r.key, r]));
      expect(byKey.size).toBe(301);
      // Inclusive: a check and the clock read after it may fall in the same millisecond.
      const between = (d: Date | null | undefined, from: number, to: number) => expect(d!.getTime()).toSatisfy((t: number) => t >= from && t <= to);
      for (const k of polls.slice(3)) {
        const r = byKey.get(k)!;
        expect(r.ok).toBe(true);
        between(r.checked_at, t0, t1);
        expect(r.polled_at).toEqual(r.checked_at);
      }
      const poll = byKey.get(polls[0]!)!.checked_at;
      expect(byKey.get(polls[3]!)!.checked_at).toEqual(poll); // one check, one time
      between(byKey.get(polls[1]!)!.checked_at, t1, t2);
      expect(byKey.get(polls[1]!)!.polled_at).toEqual(poll);
      expect(byKey.get(polls[2]!)).toMatchObject({ ok: false, polled_at: poll });
      between(byKey.get(polls[2]!)!.checked_at, t3, Date.now());
      between(byKey.get('new-run')!.checked_at, t2, t3);
      expect(byKey.get('new-run')!.polled_at).toEqual(byKey.get('new-run')!.checked_at); // the first check counts as a poll
    } finally {
      await pool.end();
    }
  });

  it('flush() (a graceful stop) writes the checks still held at once, not a second later or never', async () => {
    const pool = new pg.Pool({ connectionString: db.uri, max: 1 });
    try {
      const record = createCheckRecorder({ pool, logger: pino({ level: 'silent' }), delayMs: 60_000 });
      const at = performance.now();
      record({ sensor: 'wait_for_success_end', keys: ['2024-02-01:WF'], satisfied: [], requestedAt: at, startedAt: at, finishedAt: at, ok: true, reason: 'poll' });
      const held = async () => (await db.pool.query(`select key from l2flow.sensor_check where sensor = 'wait_for_success_end'`)).rows;
      expect(await held()).toEqual([]);
      await record.flush();
      expect(await held()).toEqual([{ key: '2024-02-01:WF' }]);
      await record.flush(); // nothing held: nothing written, resolves
    } finally {
      await pool.end();
    }
  });
});
