import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { expect, onTestFailed, onTestFinished } from 'vitest';
import { createRun } from '../../src/runtime/run-store.js';
import { addDays } from '../../src/lib/dates.js';
import { createSegmentationView, createSplitTestDbs, createTestDb, type TestDb } from './db.js';
import { ensureBuilt, startRuntime, until, type Runtime } from './process.js';
import { startSapServer, type TestSapServer } from './sap-server.js';
import { startSmtpServer, type TestSmtpServer } from './smtp.js';

/**
 * Crash-and-resume harness: one database, one SAP server and one SMTP server per test, the real `l2flow run`
 * process, killed with SIGKILL while a step is in flight and started again. Every "moment" is read from the
 * database (l2flow.run, pg_stat_activity) or from the SAP server's request log, never from a sleep.
 */

export const WF = 'WF_MAIN_DATASETS_LOAD_L2_TO_L2';
export const D = '2024-03-15';
export const SAP_ROWS = 7;

export interface CrashOptions {
  /** workflow.startDate; default D, so wait_for_success_end of D passes at once. */
  startDate?: string;
  /** sensors.wait_for_l2_full_load.timeoutSeconds */
  flagTimeoutSeconds?: number;
  /** Configure the builtin session killer with this idleSeconds. */
  sysKillIdleSeconds?: number;
  /** l2flow's tables in a database of their own (L2FLOW_CONN_STATE); `db` is then the warehouse only. */
  separateState?: boolean;
}

export interface RunInfo {
  run_id: string;
  status: string;
  load_id: string | null;
  current_step: string | null;
  owner: string | null;
  error: { code: string; message: string } | null;
}

export interface Backend {
  pid: number;
  query: string;
}

/** A test transaction holding a lock until `release()`. */
export interface Hold {
  release(): Promise<void>;
}

export interface CrashHarness {
  /** The warehouse (and l2flow's tables, unless separateState). */
  db: TestDb;
  /** Where l2flow's tables are: `db` itself unless separateState. */
  state: TestDb;
  sap: TestSapServer;
  smtp: TestSmtpServer;
  env: Record<string, string>;
  /** Every process started so far, in order. */
  runtimes: Runtime[];
  readonly runtime: Runtime;
  start(): Runtime;
  /** SIGKILL the current process, wait for its exit and for PostgreSQL to drop its lock connection (and so its run locks). */
  kill(): Promise<void>;
  trigger(date: string): Promise<void>;
  /** Insert the L1→L2 flag for the business date of `logicalDate`. */
  flag(logicalDate: string): Promise<void>;
  run(date: string): Promise<RunInfo | undefined>;
  waitRun(what: string, date: string, pred: (r: RunInfo) => boolean, timeoutMs?: number): Promise<RunInfo>;
  /** Wait until the run is finished (success / failed / cancelled). */
  finished(date: string, timeoutMs?: number): Promise<RunInfo>;
  /**
   * Wait until one of l2flow's pooled backends (other than the `exclude`d ones, e.g. those the killed process left
   * behind) waits on a heavyweight Lock while running a query like `like`.
   */
  lockWaiters(like: string, exclude?: Backend[]): Promise<Backend[]>;
  /** Wait until one of l2flow's pooled backends (other than the `exclude`d ones) actively runs a query like `like`. */
  activeQueries(like: string, exclude?: Backend[]): Promise<Backend[]>;
  /** Wait until these backends are gone (PostgreSQL ended them). */
  gone(what: string, backends: Backend[], timeoutMs?: number): Promise<void>;
  /** Begin a transaction on a dedicated connection and run `sql` in it (e.g. a LOCK TABLE); on l2flow's database when it names l2flow.* */
  hold(sql: string, values?: unknown[]): Promise<Hold>;
  gate(name: 'reports' | 'segmentation', open: boolean): Promise<void>;
  /** A query on the warehouse, or on l2flow's database when it names l2flow.* (the same database unless separateState). */
  query<R extends pg.QueryResultRow = Record<string, unknown>>(sql: string, values?: unknown[]): Promise<R[]>;
  /** Run `fn` after the database is dropped (e.g. drop a role created for the test); last registered runs first. */
  afterClose(fn: () => Promise<unknown>): void;
  /** The logs of every process, for failure diagnosis. */
  logs(): string;
  close(): Promise<void>;
}

export async function createCrashHarness(opts: CrashOptions = {}): Promise<CrashHarness> {
  ensureBuilt();
  const split = opts.separateState ? await createSplitTestDbs() : undefined;
  const db = split?.dwh ?? await createTestDb();
  const state = split?.state ?? db;
  await createSegmentationView(db.pool, SAP_ROWS);
  // The children: each waits for its gate, then writes one row (transactional: the row and the step memo commit together).
  await db.pool.query(`create schema dwh;
    create table dwh.gate (name text primary key, open boolean not null);
    insert into dwh.gate values ('reports', true), ('segmentation', true);
    create table dwh.child_calls (child text not null, logical_date date not null, load_id bigint, at timestamptz default clock_timestamp());
    create function dwh.child(p_child text, p_date date, p_load bigint) returns integer language plpgsql as $$
    begin
      while not (select open from dwh.gate where name = p_child) loop
        perform pg_sleep(0.02);
      end loop;
      insert into dwh.child_calls (child, logical_date, load_id) values (p_child, p_date, p_load);
      return 1;
    end $$;`);
  const sap = await startSapServer();
  const smtp = await startSmtpServer();
  const dir = mkdtempSync(path.join(tmpdir(), 'l2flow-crash-'));
  const configFile = path.join(dir, 'l2flow.json');
  const children: Record<string, unknown> = {
    wf_data_preparation_for_reports: { kind: 'sql', statement: "select dwh.child('reports', $1, $2)" },
    l1_to_l2_p_load_data_ds_client_segmentation_full: { kind: 'sql', statement: "select dwh.child('segmentation', $1, $2)" },
  };
  if (opts.sysKillIdleSeconds !== undefined) {
    children.sys_kill_all_session_pg = { kind: 'builtin', name: 'sys_kill_all_session_pg', idleSeconds: opts.sysKillIdleSeconds };
  }
  writeFileSync(configFile, JSON.stringify({
    workflow: { startDate: opts.startDate ?? D },
    ...(opts.flagTimeoutSeconds ? { sensors: { wait_for_l2_full_load: { timeoutSeconds: opts.flagTimeoutSeconds } } } : {}),
    children,
    sap: { retryBaseDelayMs: 20 },
  }));
  const env: Record<string, string> = {
    L2FLOW_CONN_DWH: db.uri,
    ...(split ? { L2FLOW_CONN_STATE: state.uri } : {}),
    L2FLOW_CONN_SAP_CONN: `${sap.base}/sap/readiness`,
    L2FLOW_CONN_SMTP_DEFAULT: smtp.uri(),
    EMAIL_RECIPIENTS: 'dwh-team@bank.example',
    L2FLOW_CONFIG: configFile,
    L2FLOW_LOG_LEVEL: 'debug',
  };
  const runtimes: Runtime[] = [];
  const holds = new Set<pg.Client>();
  const cleanups: Array<() => Promise<unknown>> = [];

  /** The database a statement is about: l2flow's when it names an l2flow table. */
  const dbOf = (sql: string) => (/\bl2flow\./.test(sql) ? state : db);
  const query = async <R extends pg.QueryResultRow>(sql: string, values?: unknown[]) => (await dbOf(sql).pool.query<R>(sql, values)).rows;

  async function backends(like: string, where: string, exclude: Backend[]): Promise<Backend[] | null> {
    const rows = await query<Backend>(
      `select pid, query from pg_stat_activity
        where datname = any($3::text[]) and application_name in ('l2flow', 'l2flow-child') and ${where} and query like $1
          and not (pid = any($2::int[])) order by backend_start`,
      [like, exclude.map((b) => b.pid), [db.name, state.name]],
    );
    return rows.length > 0 ? rows : null;
  }

  const h: CrashHarness = {
    db,
    state,
    sap,
    smtp,
    env,
    runtimes,
    get runtime() {
      const rt = runtimes.at(-1);
      if (!rt) throw new Error('no l2flow process was started');
      return rt;
    },
    start() {
      const rt = startRuntime(env);
      runtimes.push(rt);
      return rt;
    },
    async kill() {
      const { child } = h.runtime;
      if (child.exitCode === null && child.signalCode === null) {
        const exited = once(child, 'exit');
        child.kill('SIGKILL');
        await exited;
      }
      expect(child.signalCode).toBe('SIGKILL');
      // Its run and slot advisory locks live on this connection; an idle backend sees the closed socket at once.
      await until('the killed process\'s lock connection to go', async () =>
        (await state.pool.query(`select 1 from pg_stat_activity where datname = current_database() and application_name = 'l2flow-locks'`)).rowCount === 0);
    },
    async trigger(date) {
      await createRun(state.pool, { workflowId: WF, logicalDate: date, businessDate: addDays(date, -1), triggeredBy: 'manual' });
    },
    async flag(logicalDate) {
      await db.pool.query(`insert into md.dwh_flag (flag_cd, bussines_date) values ('l1_to_l2_load_successfull', $1)`, [addDays(logicalDate, -1)]);
    },
    async run(date) {
      return (await query<RunInfo>(
        `select run_id, status, load_id::text, current_step, owner, error from l2flow.run where workflow_id = $1 and logical_date = $2`,
        [WF, date],
      ))[0];
    },
    waitRun(what, date, pred, timeoutMs = 15_000) {
      return until(what, async () => {
        const r = await h.run(date);
        return r && pred(r) ? r : null;
      }, timeoutMs);
    },
    finished(date, timeoutMs = 15_000) {
      return h.waitRun(`the run of ${date} to finish`, date, (r) => ['success', 'failed', 'cancelled'].includes(r.status), timeoutMs);
    },
    lockWaiters(like, exclude = []) {
      return until(`an l2flow backend waiting on a lock in a query like ${like}`, () => backends(like, `wait_event_type = 'Lock'`, exclude));
    },
    activeQueries(like, exclude = []) {
      return until(`an l2flow backend running a query like ${like}`, () => backends(like, `state = 'active'`, exclude));
    },
    async gone(what, list, timeoutMs = 15_000) {
      await until(what, async () =>
        (await query(`select 1 from pg_stat_activity where pid = any($1::int[])`, [list.map((b) => b.pid)])).length === 0, timeoutMs);
    },
    async hold(sql, values) {
      const client = new pg.Client({ connectionString: dbOf(sql).uri, application_name: 'l2flow-test-hold' });
      client.on('error', () => undefined);
      await client.connect();
      holds.add(client);
      await client.query('begin');
      await client.query(sql, values);
      return {
        async release() {
          if (!holds.delete(client)) return;
          await client.query('commit');
          await client.end();
        },
      };
    },
    async gate(name, open) {
      await db.pool.query(`update dwh.gate set open = $2 where name = $1`, [name, open]);
    },
    query,
    afterClose(fn) {
      cleanups.push(fn);
    },
    logs() {
      return runtimes.map((rt, i) => `--- process ${i + 1} ---\n${rt.logs.join('\n')}\n${rt.stderr.join('')}`).join('\n');
    },
    async close() {
      for (const rt of runtimes) {
        if (rt.child.exitCode === null && rt.child.signalCode === null) await rt.stop('SIGKILL');
      }
      for (const c of holds) await c.end().catch(() => undefined);
      await sap.close();
      await smtp.close();
      await (split ? split.drop() : db.drop());
      rmSync(dir, { recursive: true, force: true });
      for (const fn of cleanups.reverse()) await fn();
    },
  };
  return h;
}

/**
 * What must hold after every run of `dates` succeeded, whatever was killed where:
 * the recorded load ids did not change, SAP got one distinct Idempotency-Key and one distinct body per logical date,
 * md rows are not duplicated, each transactional child's row exists once, every step succeeded and no mail went out.
 */
export async function expectSucceededOnce(
  h: CrashHarness,
  dates: string[],
  opts: { loadIds?: Record<string, string | null>; sapResends?: number } = {},
): Promise<void> {
  const loadIds = opts.loadIds ?? {};
  const runs = new Map<string, RunInfo>();
  for (const date of dates) {
    const r = (await h.run(date))!;
    expect(r.status, `run ${date}: ${JSON.stringify(r.error)}`).toBe('success');
    expect(r.load_id).not.toBeNull();
    if (loadIds[date]) expect(r.load_id, `the load id of ${date} changed after the restart`).toBe(loadIds[date]);
    runs.set(date, r);
  }
  const ids = [...runs.values()].map((r) => r.load_id!);
  expect(new Set(ids).size).toBe(dates.length);

  // SAP: exactly one distinct key and one distinct body per logical date (a resend after a crash repeats both).
  const byDate = new Map<string, { keys: Set<string>; bodies: Set<string> }>();
  for (const req of h.sap.requests) {
    const date = (JSON.parse(req.body) as { logical_date: string }).logical_date;
    const e = byDate.get(date) ?? { keys: new Set(), bodies: new Set() };
    e.keys.add(String(req.headers['idempotency-key']));
    e.bodies.add(req.body);
    byDate.set(date, e);
  }
  expect([...byDate.keys()].sort()).toEqual([...dates].sort());
  // Only a kill inside send_flg_to_sap (after SAP got the POST, before l2flow recorded the answer) repeats a request.
  expect(h.sap.requests).toHaveLength(dates.length + (opts.sapResends ?? 0));
  for (const date of dates) {
    const e = byDate.get(date)!;
    expect([...e.keys]).toEqual([`${WF}:${date}:${runs.get(date)!.load_id}:1`]);
    expect(e.bodies.size).toBe(1);
    expect(JSON.parse([...e.bodies][0]!)).toMatchObject({ calc_rows: String(SAP_ROWS), logical_date: date, code_flg: 'l2_to_SAP_successful' });
  }

  expect(await h.query(`select workflow_cd, layer_cd from md.workflow`)).toEqual([{ workflow_cd: WF, layer_cd: 'l2' }]);
  const sessions = await h.query<{ load_id: string; status_cd: string }>(`select load_id::text, status_cd from md.data_load_session order by load_id`);
  expect(sessions).toEqual(ids.map((id) => ({ load_id: id, status_cd: 's' })).sort((a, b) => Number(a.load_id) - Number(b.load_id)));
  const jobs = await h.query<{ load_id: string; run_id: string; status_cd: string }>(`select load_id::text, run_id, status_cd from md.job_session order by load_id`);
  expect(jobs).toEqual([...runs.values()].map((r) => ({ load_id: r.load_id, run_id: r.run_id, status_cd: 's' })).sort((a, b) => Number(a.load_id) - Number(b.load_id)));
  for (const id of ids) {
    const log = await h.query<{ level_cd: string; message: string }>(`select level_cd, message from md.session_log where load_id = $1 order by log_id`, [id]);
    expect(log.map((l) => `${l.level_cd} ${l.message.split(' ')[0]}`), `md.session_log of load ${id}`).toEqual(['i start', 'i successful']);
  }
  expect(await h.query(`select count(*)::int as n from md.session_log`)).toEqual([{ n: 2 * dates.length }]);

  const calls = await h.query<{ child: string; logical_date: string; load_id: string; n: number }>(
    `select child, logical_date::text, load_id::text, count(*)::int as n from dwh.child_calls group by 1, 2, 3 order by 2, 1`);
  expect(calls).toEqual(
    [...dates].sort().flatMap((date) => ['reports', 'segmentation'].map((child) => ({ child, logical_date: date, load_id: runs.get(date)!.load_id, n: 1 }))),
  );
  for (const r of runs.values()) {
    const steps = await h.query<{ step: string; status: string }>(`select step, status from l2flow.step where run_id = $1 order by started_at`, [r.run_id]);
    expect(steps).toHaveLength(9);
    expect(steps.filter((s) => s.status !== 'success')).toEqual([]);
  }
  expect(await h.query(`select count(*)::int as n from l2flow.email_outbox`)).toEqual([{ n: 0 }]);
  expect(h.smtp.messages).toHaveLength(0);
}

/** A harness for the current test: closed when the test ends; on failure the processes' logs are printed. */
export async function crashHarness(opts: CrashOptions = {}): Promise<CrashHarness> {
  const h = await createCrashHarness(opts);
  onTestFailed(() => console.error(h.logs()));
  if (process.env.L2FLOW_CRASH_DEBUG) onTestFinished(() => console.error(h.logs()));
  onTestFinished(() => h.close());
  return h;
}

/** The second process restored the run from its snapshot (it did not start it afresh). */
export function expectRestored(rt: Runtime, runId: string): void {
  const restored = rt.logs.filter((line) => {
    try {
      const l = JSON.parse(line) as { msg?: string; runId?: string };
      return l.runId === runId && l.msg === 'run restored from its snapshot';
    } catch {
      return false;
    }
  });
  expect(restored.length, `process did not log "run restored from its snapshot" for ${runId}`).toBeGreaterThanOrEqual(1);
}
