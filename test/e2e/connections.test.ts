import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { pino } from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createApp } from '../../src/runtime/app.js';
import { loadConfig } from '../../src/runtime/config.js';
import { migrate } from '../../src/runtime/migrate.js';
import { createRun } from '../../src/runtime/run-store.js';
import { createEmailDispatcher, createFailureNotifier } from '../../src/services/mail/index.js';
import { createMailer } from '../../src/services/mail/index.js';
import { memoized } from '../../src/services/db/index.js';
import { createSegmentationView, createTestDb, type TestDb } from '../helpers/db.js';
import { startPrivatePg, type PrivatePg } from '../helpers/private-pg.js';
import { ensureBuilt, runCli, startRuntime, until, type Runtime } from '../helpers/process.js';
import { startSapServer, type TestSapServer } from '../helpers/sap-server.js';
import { startSmtpServer, type TestSmtpServer } from '../helpers/smtp.js';

// Connections break under a running `l2flow run` process: the listener's backend is killed, PostgreSQL restarts.
// (A half-open listener socket is covered at hub level: test/integration/notification-hub.test.ts, "heartbeat
// forces a reconnect when the connection goes half-open".)

const FLAG = 'l1_to_l2_load_successfull';
const WF = 'WF_MAIN_DATASETS_LOAD_L2_TO_L2';
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

type LogLine = { level: number; time: number; msg: string } & Record<string, unknown>;

function parsed(rt: Runtime, from = 0): LogLine[] {
  return rt.logs.slice(from).flatMap((l) => {
    try {
      return [JSON.parse(l) as LogLine];
    } catch {
      return [];
    }
  });
}

function writeConfig(dir: string, startDate: string, reportsStatement: string): string {
  const file = path.join(dir, `l2flow-${startDate}.json`);
  writeFileSync(
    file,
    JSON.stringify({
      workflow: { startDate },
      sensors: { wait_for_l2_full_load: { pokeIntervalSeconds: 60 } },
      children: {
        wf_data_preparation_for_reports: { kind: 'sql', statement: reportsStatement },
        l1_to_l2_p_load_data_ds_client_segmentation_full: {
          kind: 'sql',
          statement: "insert into public.child_calls (child, logical_date, load_id) values ('segmentation', $1, $2)",
        },
      },
      pools: { dwh_l2: { slots: 2 } },
      sap: { retryBaseDelayMs: 20 },
    }),
  );
  return file;
}

async function prepareWarehouse(pool: pg.Pool): Promise<void> {
  await createSegmentationView(pool, 3);
  await pool.query('create table public.child_calls (child text, logical_date date, load_id bigint, at timestamptz default clock_timestamp())');
}

describe('connections break under a running l2flow', () => {
  let sap: TestSapServer;
  let smtp: TestSmtpServer;
  let dir: string;
  let runtime: Runtime | null = null;

  beforeAll(async () => {
    ensureBuilt();
    sap = await startSapServer();
    smtp = await startSmtpServer();
    dir = mkdtempSync(path.join(tmpdir(), 'l2flow-conn-'));
  });
  afterEach(async () => {
    if (runtime) expect(await runtime.stop()).toBe(0);
    runtime = null;
  });
  afterAll(async () => {
    await sap?.close();
    await smtp?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const baseEnv = (dwh: string, configFile: string) => ({
    L2FLOW_CONN_DWH: dwh,
    L2FLOW_CONN_SAP_CONN: `${sap.base}/readiness`,
    L2FLOW_CONN_SMTP_DEFAULT: smtp.uri(),
    EMAIL_RECIPIENTS: 'dwh-team@bank.example',
    L2FLOW_CONFIG: configFile,
    L2FLOW_LOG_LEVEL: 'info',
  });

  describe('the listener backend is terminated (shared server, own database)', () => {
    let db: TestDb;
    beforeAll(async () => {
      db = await createTestDb();
      await prepareWarehouse(db.pool);
    });
    afterAll(async () => {
      await db?.drop();
    });

    it('a flag inserted while the listener is down wakes the sensor right after the reconnect, not a poll (60 s) later', async () => {
      const D = '2024-03-15';
      const env = baseEnv(db.uri, writeConfig(dir, D, "insert into public.child_calls (child, logical_date, load_id) values ('reports', $1, $2)"));
      runtime = startRuntime(env);
      const rt = runtime;
      expect((await runCli(['trigger', '--date', D], env)).code).toBe(0);
      const step = async (c: pg.ClientBase | pg.Pool) =>
        (await c.query<{ current_step: string | null; status: string }>(`select current_step, status from l2flow.run where logical_date = $1`, [D])).rows[0];
      await until('the run to wait in wait_for_l2_full_load', async () => (await step(db.pool))?.current_step === 'wait_for_l2_full_load');
      const listeners = async (c: pg.ClientBase) =>
        (await c.query<{ n: number }>(`select count(*)::int as n from pg_stat_activity
          where application_name = 'l2flow-listener' and datname = current_database() and pid <> pg_backend_pid()`)).rows[0]!.n;

      const admin = new pg.Client({ connectionString: db.uri.replace(/\/[^/]*$/, '/postgres') });
      const held = new pg.Client({ connectionString: db.uri }); // open before new connections are refused
      await admin.connect();
      await held.connect();
      const allow = (yes: boolean) => admin.query(`alter database ${db.name} allow_connections ${yes}`);
      try {
        expect(await listeners(held)).toBe(1);
        const mark = rt.logs.length;
        // pg-listen reconnects within ~5 ms: refusing new connections holds the listener down while the flag lands.
        await allow(false);
        const terminatedAt = Date.now();
        await held.query(`select pg_terminate_backend(pid) from pg_stat_activity
          where application_name = 'l2flow-listener' and datname = current_database() and pid <> pg_backend_pid()`);
        await until('the runtime to notice the lost listener', async () => parsed(rt, mark).some((l) => /reconnect attempt 1$/.test(l.msg)), 5_000);
        expect(await listeners(held)).toBe(0);
        await held.query(`insert into md.dwh_flag (flag_cd, bussines_date) values ($1, '2024-03-14')`, [FLAG]);
        const insertedAt = Date.now();
        await sleep(500);
        // No NOTIFY reached the runtime and the next poll is a minute away: the run is still waiting.
        expect(await listeners(held)).toBe(0);
        expect((await step(held))?.current_step).toBe('wait_for_l2_full_load');
        await allow(true);
        const allowedAt = Date.now();

        await until('the run to leave the sensor', async () => (await step(held))?.current_step !== 'wait_for_l2_full_load', 15_000);
        const leftAt = Date.now();
        const logs = () => parsed(rt, mark);
        const reconnected = await until('the reconnect log line', async () => logs().find((l) => /LISTEN connection re-established/.test(l.msg)), 2_000);
        const left = await until('the sensor-done log line', async () => logs().find((l) => l.msg === 'run entered get_load_id'), 2_000);
        const recheckMs = left.time - reconnected.time;
        console.log(
          `[connections] listener down ${reconnected.time - terminatedAt} ms in all; reconnected ${reconnected.time - allowedAt} ms after ` +
            `connections were allowed again; reconnect-to-recheck (listener re-established -> run left wait_for_l2_full_load): ${recheckMs} ms`,
        );
        expect(left.time).toBeGreaterThanOrEqual(reconnected.time);
        expect(recheckMs).toBeLessThan(15_000); // the reconnect's recheck, not the 60 s poll
        expect(leftAt - insertedAt).toBeLessThan(15_000); // nowhere near the 60 s poll
        const attempts = logs().filter((l) => /reconnect attempt \d+$/.test(l.msg));
        expect(attempts.length).toBeGreaterThanOrEqual(1);
        expect(attempts.length).toBeLessThanOrEqual(8);

        const done = await until('the run to finish', async () => {
          const r = await step(held);
          return r && r.status !== 'running' && r.status !== 'queued' ? r : null;
        });
        expect(done.status).toBe('success');
      } finally {
        await allow(true).catch(() => undefined);
        await held.end().catch(() => undefined);
        await admin.end().catch(() => undefined);
      }
    });
  });

  describe('snapshot writes fail while a run is released (in-process)', () => {
    let db: TestDb;
    beforeAll(async () => {
      db = await createTestDb();
      await prepareWarehouse(db.pool);
      // While public.fail_persist.on is set, every write of a run's step history fails, as during an outage.
      await db.pool.query(`create table public.gate (open boolean not null); insert into public.gate values (false);
        create table public.fail_persist (on_ boolean not null); insert into public.fail_persist values (false);
        create function public.fail_persist() returns trigger language plpgsql as $$
          begin if (select on_ from public.fail_persist) then raise exception 'persisting is failing (test)'; end if; return new; end $$;
        create trigger fail_persist before insert or update on l2flow.step for each row execute function public.fail_persist();`);
    });
    afterAll(async () => {
      await db?.drop();
    });

    it('the write that lands after the release stores the last transition, so the restored run continues', async () => {
      const D = '2024-05-01';
      const config = loadConfig({
        ...baseEnv(db.uri, writeConfig(dir, D, 'do $$ begin while not (select open from public.gate) loop perform pg_sleep(0.02); end loop; end $$')),
        L2FLOW_LOG_LEVEL: 'silent',
      });
      await db.pool.query(`insert into md.dwh_flag (flag_cd, bussines_date) values ($1, '2024-04-30')`, [FLAG]);
      await db.pool.query('update public.fail_persist set on_ = true');
      const first = createApp(config, pino({ level: 'silent' }), { claimIntervalMs: 200 });
      await first.start();
      await createRun(db.pool, { workflowId: WF, logicalDate: D, businessDate: '2024-04-30', triggeredBy: 'manual' });
      await until('the reports child to be running', async () =>
        (await db.pool.query(`select 1 from pg_stat_activity where query like 'do $$ begin while not%' and pid <> pg_backend_pid()`)).rowCount);
      // Released (here: shut down) while its snapshot still waits to be written; the write succeeds only afterwards.
      const stopped = first.stop();
      await sleep(300);
      await db.pool.query('update public.fail_persist set on_ = false');
      await stopped;
      const saved = (await db.pool.query(`select status, snapshot->>'status' as actor, current_step from l2flow.run where logical_date = $1`, [D])).rows[0];
      // A snapshot taken from the stopped actor says 'stopped' and has no step in flight: it would restore as a dead run.
      expect(saved).toMatchObject({ status: 'running', actor: 'active' });
      expect(saved.current_step).toContain('run_wf_data_preparation_for_reports');

      await db.pool.query('update public.gate set open = true');
      const second = createApp(config, pino({ level: 'silent' }), { claimIntervalMs: 200 });
      await second.start();
      try {
        const done = await until('the restored run to finish', async () => {
          const r = (await db.pool.query(`select status from l2flow.run where logical_date = $1`, [D])).rows[0];
          return r && r.status !== 'running' ? r : null;
        });
        expect(done.status).toBe('success');
      } finally {
        await second.stop();
      }
    });
  });

  describe('PostgreSQL restarts (private cluster)', () => {
    let server: PrivatePg;
    let pool: pg.Pool;
    let uri: string;
    const S = '2024-09-01'; // its reports child is in flight when the server goes down
    const T = '2024-09-11'; // waits in wait_for_l2_full_load through the outage

    beforeAll(async () => {
      server = await startPrivatePg();
      const admin = new pg.Client({ connectionString: server.uri() });
      await admin.connect();
      await admin.query('create database l2flow_restart');
      await admin.end();
      uri = server.uri('l2flow_restart');
      pool = new pg.Pool({ connectionString: uri, max: 4 });
      pool.on('error', () => undefined); // idle connections die with the server
      await migrate(pool, { flagTable: 'md.dwh_flag' }); // each test can run alone
      await prepareWarehouse(pool);
    }, 60_000);
    afterAll(async () => {
      await pool?.end().catch(() => undefined);
      await server?.destroy();
    });

    it('l2flow run stays up through a restart, logs it with backoff, and every run ends correctly', { timeout: 90_000 }, async () => {
      const env = baseEnv(uri, writeConfig(dir, S, `select pg_sleep(case when $1::date = '${S}' then 30 else 0 end)`));
      expect((await runCli(['migrate'], env)).code).toBe(0);
      await pool.query(`insert into md.dwh_flag (flag_cd, bussines_date) values ($1, '2024-08-31')`, [FLAG]);
      // T's previous day succeeded, so only its flag holds it.
      await pool.query(`insert into l2flow.run (run_id, workflow_id, logical_date, business_date, status)
        values ('seed', $1, '2024-09-10', '2024-09-09', 'success')`, [WF]);
      runtime = startRuntime(env);
      const rt = runtime;
      expect((await runCli(['trigger', '--date', S], env)).code).toBe(0);
      expect((await runCli(['trigger', '--date', T], env)).code).toBe(0);
      const row = async (d: string) =>
        (await pool.query<{ run_id: string; status: string; current_step: string | null; error: string | null }>(
          `select run_id, status, current_step, error from l2flow.runs where logical_date = $1`, [d])).rows[0];
      const final = (d: string, timeoutMs: number) =>
        until(`the run of ${d} to finish`, async () => {
          const r = await row(d);
          return r && ['success', 'failed', 'cancelled'].includes(r.status) ? r : null;
        }, timeoutMs, 100);
      await until('S to be in its reports child and T in its sensor', async () =>
        (await row(S))?.current_step === 'run_wf_data_preparation_for_reports' && (await row(T))?.current_step === 'wait_for_l2_full_load');
      await until('the reports child to be running on the server', async () =>
        (await pool.query(`select 1 from pg_stat_activity where query like 'select pg_sleep(case%' and state = 'active'`)).rowCount);
      const mailsBefore = smtp.messages.length;

      const mark = rt.logs.length;
      const downAt = Date.now();
      await server.stop('fast');
      await sleep(5_000);
      expect(rt.child.exitCode).toBeNull();
      await server.start();
      const upAt = Date.now();

      const back = await until('the listener to be back', async () =>
        parsed(rt, mark).find((l) => /LISTEN connection re-established/.test(l.msg)), 20_000);
      await pool.query(`insert into md.dwh_flag (flag_cd, bussines_date) values ($1, '2024-09-10')`, [FLAG]);
      const t = await final(T, 20_000);
      expect(t).toMatchObject({ status: 'success', error: null });

      // The outage is logged once per reconnect attempt, with growing gaps, and a bounded number of lines overall.
      const outage = parsed(rt, mark).filter((l) => l.time <= back.time);
      const attempts = outage.filter((l) => /reconnect attempt \d+$/.test(l.msg));
      expect(attempts.map((l) => l.attempt)).toEqual(attempts.map((_, i) => i + 1));
      expect(attempts.length).toBeGreaterThanOrEqual(3);
      expect(attempts.length).toBeLessThanOrEqual(9);
      const gaps = attempts.slice(1).map((l, i) => l.time - attempts[i]!.time);
      expect(gaps.at(-1)!).toBeGreaterThan(gaps[0]!);
      const noisy = outage.filter((l) => l.level >= 40);
      console.log(
        `[connections] ${upAt - downAt} ms outage: ${noisy.length} warn/error lines until the listener was back ` +
          `${back.time - upAt} ms after the server (${attempts.length} reconnect attempts, gaps ${gaps.join('/')} ms):\n` +
          noisy.map((l) => `  +${l.time - downAt} ms ${l.msg}`).join('\n'),
      );
      expect(noisy.length).toBeLessThan(20);
      // The lock connection came back within its recovery window and took its locks again: no run was released.
      expect(outage.filter((l) => /lock connection lost/.test(l.msg))).toHaveLength(0);
      expect(parsed(rt, mark).filter((l) => /lock connection re-established/.test(l.msg))).toHaveLength(1);

      // S's reports child was interrupted by the restart: the step fails (retryable, but it has no retries) and the
      // run ends failed with one mail. The run is not released and restored (its locks were taken again), so the
      // child never silently runs a second time.
      const s = await final(S, 50_000);
      const reports = (msg: string) =>
        parsed(rt).filter((l) => l.msg === msg && l.child === 'wf_data_preparation_for_reports' && l.runId === s.run_id);
      const step = (await pool.query<{ status: string; error: { message: string } | null }>(
        `select status, error from l2flow.step where run_id = $1 and step = 'run_wf_data_preparation_for_reports'`, [s.run_id])).rows[0]!;
      expect(s.status).toBe('failed');
      expect(s.error).toContain('run_wf_data_preparation_for_reports');
      expect(s.error).toMatch(/57P01|terminat/i);
      expect(step.status).toBe('failed');
      expect(reports('child workflow starting')).toHaveLength(1);
      expect(reports('child workflow finished')).toHaveLength(0);
      expect(parsed(rt).filter((l) => l.msg === 'run released by this process' && l.runId === s.run_id)).toHaveLength(0);
      const [mail] = await smtp.waitForMessages(mailsBefore + 1, 15_000).then((m) => m.slice(mailsBefore));
      expect(mail!.subject).toContain(S);
      expect(mail!.subject).toContain('run_wf_data_preparation_for_reports');
      await sleep(1_000);
      expect(smtp.messages.length - mailsBefore).toBe(1);
      expect(rt.child.exitCode).toBeNull();
    });

    it('services hold up while the server is down: no crash from a dying transaction, the failure mail waits for the database', { timeout: 30_000 }, async () => {
      const logger = pino({ level: 'silent' });
      const appPool = new pg.Pool({ connectionString: uri, max: 4 });
      appPool.on('error', () => undefined);
      const mailer = createMailer({ smtpUri: smtp.uri(), from: 'l2flow@bank.example', logger });
      const ctx = { runId: 'svc-run', workflowId: WF, logicalDate: '2024-10-02', businessDate: '2024-10-01', attempt: 1, loadId: null };
      try {
        // A step-memo transaction and an outbox delivery each hold a checked-out client when the server goes down:
        // pg then emits 'error' on that client, which crashed the process when nothing listened.
        await appPool.query(`insert into l2flow.email_outbox (run_id, attempt, recipients, subject, text_body, html_body)
          values ('svc-mail', 1, '{ops@bank.example}', 'svc', 'svc', '<p>svc</p>')`);
        smtp.set({ acceptDelayMs: 1_500 });
        const dataBefore = smtp.dataStarted;
        const dispatcher = createEmailDispatcher({ pool: appPool, mailer, logger });
        const delivering = dispatcher.drainOnce().then(() => 'delivered', (e: Error) => e.message);
        const memo = memoized({ state: appPool, dwh: appPool }, ctx, 'svc_step', (c) => c.query('select pg_sleep(30)')).then(() => 'done', (e: Error) => e.message);
        await until('the memo step to be running', async () =>
          (await pool.query(`select 1 from pg_stat_activity where query = 'select pg_sleep(30)'`)).rowCount);
        await until('the mail to be on its way', async () => smtp.dataStarted > dataBefore);
        await server.stop('fast');
        expect(await memo).toMatch(/terminat/);
        expect(await delivering).toMatch(/terminat|not queryable/i);
        smtp.set({ acceptDelayMs: 0 });

        // The failure notifier: the database is down when the step runs; the mail is queued once it is back.
        const notify = createFailureNotifier({ pool: appPool, recipients: ['ops@bank.example'], logger, retryBaseDelayMs: 100 });
        const failure = { step: 'run_wf_data_preparation_for_reports', code: 'CHILD_FAILED', message: 'terminating connection' };
        const queued = notify({ ...ctx, failure }, new AbortController().signal);
        expect(await Promise.race([queued.then(() => 'settled', () => 'settled'), sleep(1_500).then(() => 'waiting')])).toBe('waiting');
        await server.start();
        const { outboxId } = await queued;
        const rows = (await pool.query(`select id::int, status from l2flow.email_outbox where run_id = $1`, [ctx.runId])).rows;
        expect(rows).toEqual([{ id: outboxId, status: 'pending' }]);
        // Aborting the wait (the run was released) ends the step at once.
        await server.stop('fast');
        const ac = new AbortController();
        const aborted = notify({ ...ctx, attempt: 2, failure }, ac.signal).then(() => 'queued', (e: { code?: string }) => e.code);
        await sleep(300);
        ac.abort();
        expect(await aborted).toBe('ABORTED');
      } finally {
        if (!(await server.isRunning())) await server.start();
        mailer.close();
        await appPool.end().catch(() => undefined);
      }
    });
  });
});
