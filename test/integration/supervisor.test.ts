import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { pino } from 'pino';
import { firstValueFrom, filter } from 'rxjs';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createApp, type App } from '../../src/runtime/app.js';
import { loadConfig } from '../../src/runtime/config.js';
import { cancelRun, claimLook, createRun, getRunByDate, runIdsDigest } from '../../src/runtime/run-store.js';
import { createSegmentationView, createTestDb, type TestDb } from '../helpers/db.js';
import { until } from '../helpers/process.js';
import { startSapServer, type TestSapServer } from '../helpers/sap-server.js';
import { startSmtpServer, type TestSmtpServer } from '../helpers/smtp.js';

// The supervisor in-process with every real service: start, persist, stop mid-step, restore in a new process.

const WF = 'WF_MAIN_DATASETS_LOAD_L2_TO_L2';

describe('supervisor', () => {
  let db: TestDb;
  let sap: TestSapServer;
  let smtp: TestSmtpServer;
  const apps: App[] = [];
  let configFile: string;

  beforeAll(async () => {
    db = await createTestDb();
    await createSegmentationView(db.pool, 3);
    await db.pool.query(`create table public.gate (open boolean not null);
      insert into public.gate values (false);
      create table public.child_calls (child text, logical_date date, load_id bigint);
      create sequence public.child_cancels`);
    sap = await startSapServer();
    smtp = await startSmtpServer();
    configFile = path.join(mkdtempSync(path.join(tmpdir(), 'l2flow-sup-')), 'l2flow.json');
    writeFileSync(configFile, JSON.stringify({
      children: {
        // The reports child waits until the test opens the gate: it holds the run inside the parallel state.
        wf_data_preparation_for_reports: {
          kind: 'sql',
          // A cancel on the server (pg_cancel_backend) is counted in a sequence, which no rollback undoes; a
          // terminated backend or a closed connection never reaches the handler.
          statement: `do $$ begin while not (select open from public.gate) loop perform pg_sleep(0.02); end loop;
            exception when query_canceled then perform nextval('public.child_cancels'); raise; end $$`,
        },
        l1_to_l2_p_load_data_ds_client_segmentation_full: {
          kind: 'sql',
          statement: "insert into public.child_calls values ('segmentation', $1, $2)",
        },
      },
    }));
  });
  afterEach(async () => {
    await Promise.all(apps.splice(0).map((a) => a.stop().catch(() => undefined)));
    // Each test starts with no unfinished run left over by another.
    await db.pool.query(`update l2flow.run set status = 'cancelled' where status in ('queued', 'running')`);
  });
  afterAll(async () => {
    await sap.close();
    await smtp.close();
    await db.drop();
  });

  function makeApp(overrides: Record<string, string> = {}, claimIntervalMs = 200): App {
    const config = loadConfig({
      L2FLOW_CONN_DWH: db.uri,
      L2FLOW_CONN_SAP_CONN: `${sap.base}/readiness`,
      L2FLOW_CONN_SMTP_DEFAULT: smtp.uri(),
      EMAIL_RECIPIENTS: 'team@bank.example',
      L2FLOW_START_DATE: '2024-05-01',
      L2FLOW_CONFIG: configFile,
      ...overrides,
    });
    const app = createApp(config, pino({ level: 'silent' }), { claimIntervalMs });
    apps.push(app);
    return app;
  }

  /** The statements sent on the connections named `applicationName` while `fn` runs, with their parameters (pg's client query, wrapped for the call). */
  async function statementsOn(applicationName: string, fn: () => Promise<unknown>): Promise<{ sql: string; values: unknown[] }[]> {
    const proto = pg.Client.prototype as unknown as { query: (...a: unknown[]) => unknown };
    const original = proto.query;
    const seen: { sql: string; values: unknown[] }[] = [];
    proto.query = function (this: pg.Client & { connectionParameters?: { application_name?: string } }, ...args: unknown[]) {
      const q = args[0] as string | { text?: string; values?: unknown[] } | undefined;
      if (this.connectionParameters?.application_name === applicationName && q !== undefined) {
        seen.push(typeof q === 'string' ? { sql: q, values: (args[1] as unknown[] | undefined) ?? [] } : { sql: q.text ?? '', values: q.values ?? [] });
      }
      return original.apply(this, args);
    };
    try {
      await fn();
    } finally {
      proto.query = original;
    }
    return seen;
  }

  it('persists every transition and resumes a stopped run from its snapshot in a new runtime', async () => {
    const date = '2024-05-01';
    await db.pool.query(`insert into md.dwh_flag values ('l1_to_l2_load_successfull', '2024-04-30')`);
    const first = makeApp();
    await first.start();
    await createRun(db.pool, { workflowId: WF, logicalDate: date, businessDate: '2024-04-30', triggeredBy: 'manual' });
    await until('the reports child to be running', async () =>
      (await db.pool.query(`select 1 from pg_stat_activity where datname = current_database() and query like 'do $$ begin while not%' and pid <> pg_backend_pid()`)).rowCount);
    // SAP is reached in the other region while reports is still held.
    await until('SAP to be called', async () => sap.requests.length === 1);
    const before = await until('only reports to be left', async () => {
      const r = await getRunByDate(db.pool, WF, date);
      return r?.current_step === 'run_wf_data_preparation_for_reports' ? r : null;
    });
    expect(before.status).toBe('running');
    expect(before.load_id).not.toBeNull();

    const cancels = async () => (await db.pool.query<{ n: string }>(`select case when is_called then last_value else 0 end as n from public.child_cancels`)).rows[0]!.n;
    expect(await cancels()).toBe('0');
    await first.stop();
    apps.splice(apps.indexOf(first), 1);
    // Stopping cancels the in-flight child on the server, not just abandons it. (Its backend being gone from
    // pg_stat_activity after stop() would prove nothing: the stopped app's pool closed that connection anyway.)
    await until('the held child to be cancelled on the server', async () => (await cancels()) === '1');
    expect((await getRunByDate(db.pool, WF, date))!.status).toBe('running');

    await db.pool.query(`update public.gate set open = true`);
    const second = makeApp();
    const restored = firstValueFrom(second.supervisor.events$.pipe(filter((e) => e.type === 'restored')));
    await second.start();
    expect((await restored).steps).toEqual(['run_wf_data_preparation_for_reports']);
    const done = await until('the run to succeed', async () => {
      const r = await getRunByDate(db.pool, WF, date);
      return r?.status === 'success' ? r : null;
    });
    expect(done.load_id).toBe(before.load_id);
    expect(sap.requests).toHaveLength(1);
    expect((await db.pool.query(`select count(*)::int as n from public.child_calls`)).rows[0].n).toBe(1);
    expect((await db.pool.query(`select count(*)::int as n from md.session_log`)).rows[0].n).toBe(2);
    const steps = (await db.pool.query(`select step, status from l2flow.step where run_id = $1`, [done.run_id])).rows;
    expect(steps).toHaveLength(9);
    expect(steps.every((s) => s.status === 'success')).toBe(true);
  });

  it('a run queued while the runtime runs starts through NOTIFY, before the claim poll could have fired', async () => {
    await db.pool.query(`update public.gate set open = true`);
    const app = makeApp({}, 60_000);
    await app.start();
    const started = firstValueFrom(app.supervisor.events$.pipe(filter((e) => e.type === 'started')));
    const t0 = Date.now();
    await createRun(db.pool, { workflowId: WF, logicalDate: '2024-06-10', businessDate: '2024-06-09', triggeredBy: 'manual' });
    const ev = await started;
    expect(ev.logicalDate).toBe('2024-06-10');
    expect(ev.at - t0).toBeLessThan(30_000); // the claim poll in this test is 60 s
  });

  it('cancel stops the run where it runs: the warehouse query is cancelled, the run is cancelled, no mail', async () => {
    const date = '2024-07-01';
    await db.pool.query(`update public.gate set open = false`);
    await db.pool.query(`insert into md.dwh_flag values ('l1_to_l2_load_successfull', '2024-06-30')`);
    const app = makeApp({ L2FLOW_START_DATE: date });
    await app.start();
    await createRun(db.pool, { workflowId: WF, logicalDate: date, businessDate: '2024-06-30', triggeredBy: 'manual' });
    await until('the reports child to be running', async () =>
      (await db.pool.query(`select 1 from pg_stat_activity where datname = current_database() and query like 'do $$ begin while not%' and pid <> pg_backend_pid()`)).rowCount);
    const cancelled = await cancelRun(db.pool, WF, date);
    expect(cancelled?.cancelled).toBe(true);
    await until('the child query to be cancelled on the server', async () =>
      (await db.pool.query(`select 1 from pg_stat_activity where datname = current_database() and query like 'do $$ begin while not%' and pid <> pg_backend_pid()`)).rowCount === 0);
    await until('the runtime to let the run go', async () => !app.supervisor.activeRunIds().includes(`manual__${date}`));
    const run = (await getRunByDate(db.pool, WF, date))!;
    expect(run.status).toBe('cancelled');
    expect(run.error?.code).toBe('CANCELLED');
    const steps = (await db.pool.query(`select step, status from l2flow.step where run_id = $1 and status <> 'success'`, [run.run_id])).rows;
    expect(steps).toEqual(expect.arrayContaining([{ step: 'run_wf_data_preparation_for_reports', status: 'cancelled' }]));
    expect((await db.pool.query(`select count(*)::int as n from l2flow.email_outbox where run_id = $1`, [run.run_id])).rows[0].n).toBe(0);
    expect((await cancelRun(db.pool, WF, date))?.cancelled).toBe(false);
  });

  it('max_active_runs holds across processes: with 1 slot and two runtimes only one run executes at a time', async () => {
    const a = makeApp({ L2FLOW_MAX_ACTIVE_RUNS: '1', L2FLOW_START_DATE: '2024-08-01' });
    const b = makeApp({ L2FLOW_MAX_ACTIVE_RUNS: '1', L2FLOW_START_DATE: '2024-08-01' });
    await a.start();
    await b.start();
    // No flag rows for these dates: every started run parks in its sensor.
    for (const d of ['2024-08-01', '2024-08-02', '2024-08-03']) {
      await createRun(db.pool, { workflowId: WF, logicalDate: d, businessDate: d, triggeredBy: 'manual' });
    }
    await until('one run to start', async () => a.supervisor.activeRunIds().length + b.supervisor.activeRunIds().length === 1);
    await new Promise((r) => setTimeout(r, 500));
    expect(a.supervisor.activeRunIds().length + b.supervisor.activeRunIds().length).toBe(1);
    const statuses = async () => (await db.pool.query(`select status, count(*)::int as n from l2flow.run where logical_date >= '2024-08-01' group by 1 order by 1`)).rows;
    expect(await statuses()).toEqual([{ status: 'queued', n: 2 }, { status: 'running', n: 1 }]);
    const [first] = [...a.supervisor.activeRunIds(), ...b.supervisor.activeRunIds()];
    await db.pool.query(`update l2flow.run set status = 'cancelled' where run_id = $1`, [first]);
    await until('the next run to take the freed slot', async () => {
      const ids = [...a.supervisor.activeRunIds(), ...b.supervisor.activeRunIds()];
      return ids.length === 1 && ids[0] !== first;
    });
  });

  it('with every max_active_runs slot running here, a claim round asks the lock connection for no slot; a freed slot goes to the earliest queued run', async () => {
    const app = makeApp({ L2FLOW_MAX_ACTIVE_RUNS: '2', L2FLOW_START_DATE: '2024-09-01' }, 60_000);
    await app.start();
    // No flag rows for these dates: every started run parks in its sensor.
    for (const d of ['2024-09-01', '2024-09-02', '2024-09-03', '2024-09-04']) {
      await createRun(db.pool, { workflowId: WF, logicalDate: d, businessDate: d, triggeredBy: 'manual' });
    }
    await until('two runs to start', async () => app.supervisor.activeRunIds().length === 2);
    // Count the statements that try run locks or slots on the runtime's lock connection.
    const onLocks = await statementsOn('l2flow-locks', async () => {
      for (let i = 0; i < 3; i++) await app.supervisor.claim();
    });
    const slotTries = onLocks.filter((s) => s.sql.includes('pg_try_advisory_lock') && s.sql.includes('generate_series')).length;
    expect(slotTries).toBe(0);
    const byStatus = async () => (await db.pool.query<{ logical_date: string; status: string }>(
      `select logical_date::text, status from l2flow.run where logical_date >= '2024-09-01' order by logical_date`)).rows.map((r) => `${r.logical_date} ${r.status}`);
    expect(await byStatus()).toEqual(['2024-09-01 running', '2024-09-02 running', '2024-09-03 queued', '2024-09-04 queued']);
    // A slot freed here is taken by the next claim round, by the earliest queued date.
    await db.pool.query(`update l2flow.run set status = 'cancelled' where logical_date = '2024-09-01' and workflow_id = $1`, [WF]);
    await until('2024-09-03 to take the freed slot', async () => (await byStatus()).includes('2024-09-03 running'));
    expect(await byStatus()).toEqual(['2024-09-01 cancelled', '2024-09-02 running', '2024-09-03 running', '2024-09-04 queued']);
    expect(app.supervisor.activeRunIds().length).toBe(2);
  });

  it("a claim round's look is one row while the runs here are those running under this process; a cancel whose NOTIFY was missed and a run of this process not executing here are still found", async () => {
    const app = makeApp({ L2FLOW_MAX_ACTIVE_RUNS: '5', L2FLOW_START_DATE: '2024-11-01' }, 60_000);
    await app.start();
    // No flag rows for these dates: every started run parks in its sensor.
    const dates = ['2024-11-01', '2024-11-02', '2024-11-03'];
    for (const d of dates) await createRun(db.pool, { workflowId: WF, logicalDate: d, businessDate: d, triggeredBy: 'manual' });
    const ids = dates.map((d) => `manual__${d}`);
    await until('three runs to start', async () => app.supervisor.activeRunIds().length === 3);
    // Their parked snapshots written and the pool idle: a snapshot write that came after the cancel below would find
    // the run cancelled and stop it itself, and the sweep would have nothing left to find.
    await until('the three parked snapshots written', async () => {
      const { rows } = await db.pool.query<{ n: number }>(
        `select count(*)::int as n from l2flow.run where run_id = any($1) and current_step = 'wait_for_l2_full_load'`, [ids]);
      return rows[0]!.n === 3 && app.pool.waitingCount === 0 && app.pool.idleCount === app.pool.totalCount;
    });
    // The statements of the runtime's pool during a claim round: its looks at the runs (not the parked runs' own
    // snapshot writes, which may land meanwhile), each with the run ids among its parameters.
    const claimRound = async () =>
      (await statementsOn('l2flow', () => app.supervisor.claim()))
        .filter((s) => /from l2flow\.run where/.test(s.sql) && /status (not )?in \(/.test(s.sql))
        .map((s) => ({ ...s, ids: ids.filter((id) => JSON.stringify(s.values).includes(id)) }));
    // All three run here: one look, no run id sent to the server.
    const quiet = await claimRound();
    expect(quiet).toHaveLength(1);
    expect(quiet[0]!.sql).toContain('sha256');
    expect(quiet[0]!.ids).toEqual([]);

    // A cancel whose NOTIFY never comes (triggers off for that transaction): the next sweep stops the run here.
    const c = await db.pool.connect();
    try {
      await c.query(`begin; set local session_replication_role = replica;
        update l2flow.run set status = 'cancelled' where run_id = '${ids[0]}'; commit`);
    } finally {
      c.release();
    }
    expect(app.supervisor.activeRunIds()).toContain(ids[0]);
    const sweep = await claimRound();
    expect(sweep.some((s) => s.ids.length === 3)).toBe(true); // looked run by run
    await until('the cancelled run to stop here', async () => !app.supervisor.activeRunIds().includes(ids[0]!));
    expect((await getRunByDate(db.pool, WF, dates[0]!))!.status).toBe('cancelled');
    expect((await claimRound()).map((s) => s.ids)).toEqual([[]]); // back to the one-row look

    // A run of this process that no live run here executes (as after its lock was lost): the look sees it.
    await db.pool.query(
      `insert into l2flow.run (run_id, workflow_id, logical_date, business_date, status, owner) values ('manual__2024-11-09', $1, '2024-11-09', '2024-11-09', 'running', $2)`,
      [WF, app.owner],
    );
    expect(app.supervisor.activeRunIds()).not.toContain('manual__2024-11-09');
    await claimRound();
    await until('the run to be executed here', async () => app.supervisor.activeRunIds().includes('manual__2024-11-09'));
  });

  it("the look's digest of this owner's running runs is the one the process computes, whatever the run ids; the others are the rest, oldest first", async () => {
    const wf = 'WF_LOOK_DIGEST';
    const rows: [string, string, string, string | null][] = [
      ['manual__2024-12-03', '2024-12-03', 'running', 'me'],
      ['Zürich é 2024-12-01', '2024-12-01', 'running', 'me'],
      ['😀 2024-12-02', '2024-12-02', 'running', 'me'],
      ['a', '2024-12-04', 'running', 'me'],
      ['ab', '2024-12-05', 'running', 'me'],
      ['queued mine', '2024-12-07', 'queued', 'me'],
      ['elsewhere', '2024-12-06', 'running', 'another process'],
      ['nobody', '2024-12-08', 'running', null],
      ['done', '2024-12-09', 'success', 'me'],
    ];
    for (const [id, d, status, owner] of rows) {
      await db.pool.query(`insert into l2flow.run (run_id, workflow_id, logical_date, business_date, status, owner) values ($1, $2, $3, $3, $4, $5)`, [id, wf, d, status, owner]);
    }
    const look = await claimLook(db.pool, wf, 'me');
    const mine = rows.filter((r) => r[2] === 'running' && r[3] === 'me').map((r) => r[0]);
    expect(look.mine).toBe(runIdsDigest(mine));
    expect(look.mine).toBe(runIdsDigest([...mine].reverse()));
    expect(look.mine).not.toBe(runIdsDigest(mine.slice(1)));
    expect(look.others).toEqual(['elsewhere', 'queued mine', 'nobody']);
    expect((await claimLook(db.pool, wf, 'someone else')).mine).toBe(runIdsDigest([]));
  });

  it('a run timeout fails the run at its original deadline, also across a restart of the runtime', async () => {
    const date = '2024-10-01';
    // No flag: the run waits in its sensor until the 4 s run timeout.
    const first = makeApp({ L2FLOW_START_DATE: date, L2FLOW_RUN_TIMEOUT_SECONDS: '4' });
    await first.start();
    await createRun(db.pool, { workflowId: WF, logicalDate: date, businessDate: '2024-09-30', triggeredBy: 'manual' });
    await until('the run to wait for its flag', async () => (await getRunByDate(db.pool, WF, date))?.current_step === 'wait_for_l2_full_load');
    await new Promise((r) => setTimeout(r, 2000));
    await first.stop();
    apps.splice(apps.indexOf(first), 1);
    const restartedAt = Date.now();
    const second = makeApp({ L2FLOW_START_DATE: date, L2FLOW_RUN_TIMEOUT_SECONDS: '4' });
    await second.start();
    const done = await until('the run to time out', async () => {
      const r = await getRunByDate(db.pool, WF, date);
      return r?.status === 'failed' ? r : null;
    });
    expect(done.error?.message).toMatch(/wait_for_l2_full_load: the run exceeded its timeout of 4 s/);
    const elapsed = done.finished_at!.getTime() - done.started_at!.getTime();
    // Not before the deadline, and before a timer re-armed from scratch by the restart could have fired (4 s after it).
    expect(elapsed).toBeGreaterThanOrEqual(3900);
    expect(done.finished_at!.getTime()).toBeLessThan(restartedAt + 4000);
    expect((await db.pool.query(`select count(*)::int as n from l2flow.email_outbox where run_id = $1`, [done.run_id])).rows[0].n).toBe(1);
  });

  it('exactly one of several processes is the leader; when it stops another takes over', async () => {
    const trio = [makeApp(), makeApp(), makeApp()];
    for (const app of trio) await app.start();
    await until('a leader', async () => trio.some((a) => a.supervisor.isLeader()));
    await new Promise((r) => setTimeout(r, 400)); // two more claim rounds: nobody else may lead
    expect(trio.filter((a) => a.supervisor.isLeader())).toHaveLength(1);
    const leader = trio.find((a) => a.supervisor.isLeader())!;
    const stoppedAt = Date.now();
    await leader.stop();
    apps.splice(apps.indexOf(leader), 1);
    const rest = trio.filter((a) => a !== leader);
    await until('a new leader', async () => rest.some((a) => a.supervisor.isLeader()), 3000, 10);
    // Taken over on a claim round (every 200 ms here), not by a timeout or lease.
    expect(Date.now() - stoppedAt).toBeLessThan(3000);
    expect(rest.filter((a) => a.supervisor.isLeader())).toHaveLength(1);
  });
});
