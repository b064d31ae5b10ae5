import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { addDays } from '../../src/lib/dates.js';
import { createApp, type App } from '../../src/runtime/app.js';
import { loadConfig } from '../../src/runtime/config.js';
import { createRun } from '../../src/runtime/run-store.js';
import { createSegmentationView, createTestDb, type TestDb } from '../helpers/db.js';
import { ensureBuilt, ROOT, runMain } from '../helpers/process.js';
import { startSapServer, type TestSapServer } from '../helpers/sap-server.js';
import { startSmtpServer, type TestSmtpServer } from '../helpers/smtp.js';

// `l2flow backfill` against a real warehouse, with the runtime (createApp, every real service) in this process.

const WF = 'WF_MAIN_DATASETS_LOAD_L2_TO_L2';
const START = '2024-07-01';
/** The segmentation child fails (division by zero) for this logical date only. */
const FAILING = '2024-07-12';
/** wait_for_success_end's fallback poll (the default): a chain that moved by polling would take this long per date. */
const SUCCESS_END_POLL_MS = 100_000;

describe('l2flow backfill', () => {
  let db: TestDb;
  let sap: TestSapServer;
  let smtp: TestSmtpServer;
  let configFile: string;
  const apps: App[] = [];

  beforeAll(async () => {
    ensureBuilt();
    db = await createTestDb();
    await createSegmentationView(db.pool, 3);
    sap = await startSapServer();
    smtp = await startSmtpServer();
    configFile = path.join(mkdtempSync(path.join(tmpdir(), 'l2flow-backfill-')), 'l2flow.json');
    writeFileSync(configFile, JSON.stringify({
      children: {
        wf_data_preparation_for_reports: { kind: 'sql', statement: 'select $1::date' },
        l1_to_l2_p_load_data_ds_client_segmentation_full: { kind: 'sql', statement: `select case when $1::date = '${FAILING}' then 1/0 else 1 end` },
      },
    }));
  }, 180_000);
  afterEach(async () => {
    await Promise.all(apps.splice(0).map((a) => a.stop().catch(() => undefined)));
    await db.pool.query(`update l2flow.run set status = 'cancelled' where status in ('queued', 'running')`);
  });
  afterAll(async () => {
    await sap?.close();
    await smtp?.close();
    await db?.drop();
  });

  const cliEnv = () => ({ L2FLOW_CONN_DWH: db.uri, L2FLOW_START_DATE: START });
  const backfill = (...args: string[]) => runMain(['backfill', ...args], cliEnv());

  async function startApp(o: { env?: Record<string, string>; claimIntervalMs?: number } = {}): Promise<App> {
    const config = loadConfig({
      ...o.env,
      L2FLOW_CONN_DWH: db.uri,
      L2FLOW_CONN_SAP_CONN: `${sap.base}/readiness`,
      L2FLOW_CONN_SMTP_DEFAULT: smtp.uri(),
      EMAIL_RECIPIENTS: 'team@bank.example',
      L2FLOW_START_DATE: START,
      L2FLOW_CONFIG: configFile,
    });
    const app = createApp(config, pino({ level: 'silent' }), { claimIntervalMs: o.claimIntervalMs ?? 200 });
    apps.push(app);
    await app.start();
    return app;
  }

  async function flags(from: string, to: string): Promise<void> {
    await db.pool.query(
      `insert into md.dwh_flag (flag_cd, bussines_date) select 'l1_to_l2_load_successfull', d::date from generate_series($1::date, $2::date, '1 day') d`,
      [addDays(from, -1), addDays(to, -1)],
    );
  }

  async function runs(from: string, to: string) {
    const { rows } = await db.pool.query<{ logical_date: string; status: string; triggered_by: string; created_at: Date; finished_at: Date | null }>(
      `select logical_date::text, status, triggered_by, created_at, finished_at from l2flow.run where logical_date between $1 and $2 order by 1`,
      [from, to],
    );
    return rows;
  }

  it('--dry-run says what would happen to each date and creates nothing', async () => {
    const dates = ['2024-09-01', '2024-09-02', '2024-09-03'];
    for (const d of dates) await createRun(db.pool, { workflowId: WF, logicalDate: d, businessDate: addDays(d, -1), triggeredBy: 'manual' });
    await db.pool.query(`update l2flow.run set status = 'success' where logical_date = '2024-09-01';
      update l2flow.run set status = 'failed' where logical_date = '2024-09-02';
      update l2flow.run set status = 'running', current_step = 'wait_for_l2_full_load' where logical_date = '2024-09-03'`);
    const r = await backfill('--from', '2024-09-01', '--to', '2024-09-05', '--dry-run');
    expect(r.code, r.err).toBe(0);
    expect(r.out.split('\n')).toEqual([
      '2024-09-01  already successful: left as it is',
      '2024-09-02  failed: stays failed (later dates wait for it)',
      '2024-09-03  already running: will be followed (in wait_for_l2_full_load)',
      '2024-09-04  new run (would be queued)',
      '2024-09-05  new run (would be queued)',
      '2024-09-01 … 2024-09-05: 5 dates: 2 new, 1 already successful, 1 already failed, 1 already running; dry run: nothing created',
    ]);
    // The predecessor of the first date has no run: the chain could not start.
    expect(r.err).toMatch(/2024-09-01 waits \(wait_for_success_end\) for a successful run of 2024-08-31, which has no run/);
    expect((await runs('2024-09-01', '2024-09-05')).map((x) => x.status)).toEqual(['success', 'failed', 'running']);
  });

  it('queues 10 dates and follows them to the end at run speed: one line per finished run, exit 0', async () => {
    await flags('2024-07-01', '2024-07-10');
    await startApp();
    const t0 = Date.now();
    const r = await backfill('--from', '2024-07-01', '--to', '2024-07-10');
    const tookMs = Date.now() - t0;
    expect(r.code, `${r.out}\n${r.err}`).toBe(0);
    const lines = r.out.split('\n');
    expect(lines.filter((l) => / {2}new run backfill__2024-07-\d\d$/.test(l))).toHaveLength(10);
    const finished = lines.filter((l) => /^2024-07-\d\d {2}success {4}load id \d+ {2}took /.test(l));
    expect(finished).toHaveLength(10);
    expect(lines.at(-1)).toMatch(/^backfill 2024-07-01 … 2024-07-10: 10 succeeded, 0 failed or cancelled, 0 blocked, of 10 in /);
    const rows = await runs('2024-07-01', '2024-07-10');
    expect(rows.every((x) => x.status === 'success' && x.triggered_by === 'backfill')).toBe(true);
    // Each run woke on its predecessor's NOTIFY: the whole chain takes far less than one fallback poll of one date.
    const chainMs = Math.max(...rows.map((x) => x.finished_at!.getTime())) - Math.min(...rows.map((x) => x.created_at.getTime()));
    console.log(`10-date backfill: chain ${chainMs} ms, command ${tookMs} ms`);
    expect(chainMs).toBeLessThan(SUCCESS_END_POLL_MS / 2);
    // Again: nothing new, every date already successful, exit 0 at once.
    const again = await backfill('--from', '2024-07-01', '--to', '2024-07-10');
    expect(again.code).toBe(0);
    expect(again.out).toMatch(/10 dates: 10 already successful/);
  }, 120_000);

  it('with max_active_runs 1 and a claim interval of an hour the chain still moves: each next run is claimed as its predecessor ends', async () => {
    await flags('2024-07-21', '2024-07-24');
    // The chain's predecessor already succeeded.
    await createRun(db.pool, { workflowId: WF, logicalDate: '2024-07-20', businessDate: '2024-07-19', triggeredBy: 'manual' });
    await db.pool.query(`update l2flow.run set status = 'success' where logical_date = '2024-07-20'`);
    // Only events can move this chain: the fallback claim round and wait_for_success_end's poll are far away.
    await startApp({ env: { L2FLOW_MAX_ACTIVE_RUNS: '1' }, claimIntervalMs: 3_600_000 });
    const r = await backfill('--from', '2024-07-21', '--to', '2024-07-24');
    expect(r.code, `${r.out}\n${r.err}`).toBe(0);
    const rows = await db.pool.query<{ logical_date: string; status: string; started_at: Date; finished_at: Date }>(
      `select logical_date::text, status, started_at, finished_at from l2flow.run where logical_date between '2024-07-21' and '2024-07-24' order by 1`,
    );
    expect(rows.rows.map((x) => x.status)).toEqual(['success', 'success', 'success', 'success']);
    // One at a time, in date order: each run started only after the one before it finished.
    for (let i = 1; i < rows.rows.length; i++) {
      expect(rows.rows[i]!.started_at.getTime()).toBeGreaterThanOrEqual(rows.rows[i - 1]!.finished_at.getTime());
    }
  }, 120_000);

  it('a failing date: its failure is listed, the dates after it are blocked, exit 1', async () => {
    await flags('2024-07-11', '2024-07-14');
    await startApp();
    const r = await backfill('--from', '2024-07-11', '--to', '2024-07-14');
    expect(r.code, `${r.out}\n${r.err}`).toBe(1);
    expect(r.out).toMatch(/^2024-07-11 {2}success/m);
    expect(r.out).toMatch(/^2024-07-12 {2}failed {5}CHILD_FAILED: load_ds_client_segmentation: .*division by zero/m);
    expect(r.out).toMatch(/^2024-07-13 {2}blocked {4}waits in wait_for_success_end for 2024-07-12, which failed$/m);
    expect(r.out).toMatch(/^2024-07-14 {2}blocked {4}waits in wait_for_success_end for 2024-07-12, which failed$/m);
    expect(r.out).toMatch(/1 succeeded, 1 failed or cancelled, 2 blocked, of 4/);
    expect(r.err).toMatch(/see `l2flow status --date 2024-07-12`/);
  }, 120_000);

  it('--no-wait queues the runs and exits 0 at once, without a runtime', async () => {
    const r = await backfill('--from', '2024-10-01', '--to', '2024-10-03', '--no-wait');
    expect(r.code, r.err).toBe(0);
    expect(r.out).toMatch(/runs queued; .*Follow with `l2flow backfill --from 2024-10-01 --to 2024-10-03`/);
    expect((await runs('2024-10-01', '2024-10-03')).map((x) => [x.status, x.triggered_by])).toEqual([
      ['queued', 'backfill'],
      ['queued', 'backfill'],
      ['queued', 'backfill'],
    ]);
  });

  it('bad arguments exit 2 naming the flag, and create nothing', async () => {
    const cases: Array<[string[], RegExp]> = [
      [['--to', '2024-08-01'], /--from is required/],
      [['--from', '2024-08-01'], /--to is required/],
      [['--from', '2024-08-05', '--to', '2024-08-01'], /--to 2024-08-01 is before --from 2024-08-05/],
      [['--from', '2024-06-30', '--to', '2024-08-01'], /--from 2024-06-30 is before the workflow's start date 2024-07-01/],
      [['--from', '2024-08-01', '--to', '2024-08-32'], /--to "2024-08-32" is not a date/],
      [['--from', '2024-08-01', '--to', '2035-01-01'], /more than 3660 dates/],
      [['--from', '2024-08-01', '--to', '2024-08-02', '--days', '3'], /unknown flag --days; valid flags: --from <value>, --to <value>, --dry-run, --no-wait/],
    ];
    for (const [args, message] of cases) {
      const r = await backfill(...args);
      expect(r.code, args.join(' ')).toBe(2);
      expect(r.err).toMatch(message);
    }
    expect(await runs('2024-06-01', '2034-12-31').then((x) => x.filter((y) => y.logical_date.startsWith('2024-08')))).toEqual([]);
  });

  it('Ctrl-C stops following, not the runs, and says how to follow again (exit 130)', async () => {
    const child = spawn(process.execPath, [path.join(ROOT, 'bin/l2flow.js'), 'backfill', '--from', '2024-11-01', '--to', '2024-11-02'], {
      cwd: ROOT,
      // The first date of the workflow: it waits for nothing, so only Ctrl-C ends following (no runtime runs it).
      env: { PATH: process.env.PATH ?? '', ...cliEnv(), L2FLOW_START_DATE: '2024-11-01' },
    });
    let out = '';
    let err = '';
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const following = new Promise<void>((resolve) => {
      child.stdout.on('data', (d: Buffer) => {
        out += d.toString();
        if (out.includes('following 2 runs')) resolve();
      });
    });
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    await following;
    child.kill('SIGINT');
    expect(await exited, `${out}\n${err}`).toBe(130);
    expect(err).toMatch(/stopped following; the runs go on\. Follow again with `l2flow backfill --from 2024-11-01 --to 2024-11-02`/);
    expect((await runs('2024-11-01', '2024-11-02')).map((x) => x.status)).toEqual(['queued', 'queued']);
  }, 60_000);
});
