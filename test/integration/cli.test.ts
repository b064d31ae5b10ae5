import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dateInZone } from '../../src/lib/dates.js';
import { createTestDb, type TestDb } from '../helpers/db.js';
import { ensureBuilt, runCli, runMain } from '../helpers/process.js';
import { writeChildrenConfig } from '../helpers/children-config.js';


// The test server trusts local connections, so this password is sent nowhere; it only must never be printed.
const SECRET = 'S3cr3t-Pa55';
const withPassword = (uri: string) => uri.replace('postgres://root@', `postgres://root:${SECRET}@`);

const tmp = mkdtempSync(path.join(os.tmpdir(), 'l2flow-cli-test-'));
const childrenFile = writeChildrenConfig(tmp);

/** Everything a full `run` needs except the warehouse; tests override or drop keys. */
function runEnv(dwhUri: string, over: Record<string, string | undefined> = {}): Record<string, string> {
  const env: Record<string, string | undefined> = {
    L2FLOW_CONN_DWH: dwhUri,
    L2FLOW_CONN_SAP_CONN: `https://sap:${SECRET}@127.0.0.1:9/readiness`,
    L2FLOW_CONN_SMTP_DEFAULT: `smtp://mail:${SECRET}@127.0.0.1:9`,
    EMAIL_RECIPIENTS: 'dwh-team@bank.example',
    L2FLOW_CONFIG: childrenFile,
    L2FLOW_LOG_LEVEL: 'silent',
    ...over,
  };
  return Object.fromEntries(Object.entries(env).filter((e): e is [string, string] => e[1] !== undefined));
}

interface Result {
  code: number;
  out: string;
  err: string;
}

/** Every line any CLI call printed, to check that no secret ever appears. */
const printed: string[] = [];

/** `main(argv)` in this process with exactly `env` as its configuration. */
async function cli(argv: string[], env: Record<string, string>): Promise<Result> {
  const r = await runMain(argv, env);
  printed.push(r.out, r.err);
  return r;
}

/** `node bin/l2flow.js argv` with exactly `env` (plus PATH) as its environment. */
async function spawnCli(argv: string[], env: Record<string, string>): Promise<Result> {
  const r = await runCli(argv, env);
  printed.push(r.stdout, r.stderr);
  return { code: r.code ?? -1, out: r.stdout, err: r.stderr };
}

let db: TestDb;
let dwh: string; // the test database's URI, with a password in it
let env: Record<string, string>; // enough for migrate, trigger and status

beforeAll(async () => {
  ensureBuilt();
  db = await createTestDb();
  dwh = withPassword(db.uri);
  env = { L2FLOW_CONN_DWH: dwh };
}, 180_000);

afterAll(async () => {
  // Checked once everything has run: no output of any call carried the warehouse (or any other) password.
  expect(printed.join('\n')).not.toContain(SECRET);
  await db?.drop();
  rmSync(tmp, { recursive: true, force: true });
});

/** Sessions ever opened on database `name` (pg_stat_database.sessions, PostgreSQL 14+), read from another database. */
async function sessionsOpened(name: string): Promise<number> {
  const admin = new pg.Client({ connectionString: db.uri.replace(/\/[^/]*$/, '/postgres') });
  await admin.connect();
  try {
    const { rows } = await admin.query<{ n: number }>('select sessions::int as n from pg_stat_database where datname = $1', [name]);
    return rows[0]?.n ?? 0;
  } finally {
    await admin.end();
  }
}

async function runsOf(d: TestDb, where = 'true'): Promise<{ run_id: string; logical_date: string; status: string; triggered_by: string }[]> {
  const { rows } = await d.pool.query(`select run_id, logical_date::text, status, triggered_by from l2flow.run where ${where} order by logical_date`);
  return rows;
}

describe('usage', () => {
  it('no command prints the usage and exits 2', async () => {
    const r = await cli([], env);
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/usage: l2flow <command>/);
    for (const cmd of ['migrate', 'run', 'trigger', 'status', 'cancel', 'backfill']) expect(r.err).toContain(cmd);
  });

  it('help exits 0', async () => {
    expect((await cli(['help'], env)).code).toBe(0);
    expect((await cli(['--help'], env)).code).toBe(0);
  });

  it('an unknown command exits 2 and names it', async () => {
    const r = await cli(['launch'], env);
    expect(r.code).toBe(2);
    expect(r.err).toContain('unknown command "launch"');
    expect(r.err).toContain('usage:');
  });

  it('an unknown flag exits 2 and names the valid flags', async () => {
    let r = await cli(['trigger', '--day', '2024-03-15'], env);
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/trigger: unknown flag --day; valid flags: --date <value>/);
    r = await cli(['status', '--format=json'], env);
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/unknown flag --format; valid flags: --date <value>, --json/);
    r = await cli(['migrate', '--force'], env);
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/migrate takes no flags/);
    r = await cli(['trigger', '2024-03-15'], env);
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/unexpected argument "2024-03-15"/);
  });

  it('a flag without its value, a value for a switch, or a flag given twice exits 2', async () => {
    expect((await cli(['trigger', '--date'], env)).err).toMatch(/--date needs a value .*write --date <value>/);
    expect((await cli(['status', '--json=yes'], env)).err).toMatch(/--json takes no value: write just --json/);
    const r = await cli(['trigger', '--date', '2024-03-15', '--date', '2024-03-16'], env);
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/--date is given twice/);
    expect(await runsOf(db)).toEqual([]);
  });

  it('a bad configuration exits 2 naming the key, before anything connects', async () => {
    const r = await cli(['status'], { L2FLOW_CONN_DWH: dwh, L2FLOW_TIMEZONE: 'Asia/Tashkentt' });
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/L2FLOW_TIMEZONE: "Asia\/Tashkentt" is not an IANA time zone: write e\.g\. Asia\/Tashkent/);
    const missing = await cli(['status'], {});
    expect(missing.code).toBe(2);
    expect(missing.err).toMatch(/L2FLOW_CONN_DWH: .*export L2FLOW_CONN_DWH=postgres:\/\//);
  });
});

describe('migrate', () => {
  it('is idempotent: twice exits 0', async () => {
    const first = await cli(['migrate'], env);
    expect(first).toMatchObject({ code: 0 });
    expect(first.out).toMatch(/notify trigger installed on md\.dwh_flag/);
    const again = await cli(['migrate'], env);
    expect(again.code).toBe(0);
    expect(again.out).toMatch(/schema up to date/);
  });
});

describe('trigger and status', () => {
  it('rejects an impossible date with exit 2', async () => {
    const r = await cli(['trigger', '--date', '2024-02-30'], env);
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/--date "2024-02-30" is not a date: write YYYY-MM-DD/);
    expect(await runsOf(db)).toEqual([]);
  });

  it('rejects a date before the start date with exit 2', async () => {
    const r = await cli(['trigger', '--date', '2023-12-21'], env);
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/before the workflow's start date 2023-12-22/);
    expect(await runsOf(db)).toEqual([]);
  });

  it('queues a run and prints it; again says it already exists (exit 0 while queued)', async () => {
    const r = await cli(['trigger', '--date', '2024-03-15'], env);
    expect(r.code).toBe(0);
    expect(r.out).toBe('queued manual__2024-03-15: logical date 2024-03-15, business date 2024-03-14');
    expect(await runsOf(db, "logical_date = '2024-03-15'")).toEqual([
      { run_id: 'manual__2024-03-15', logical_date: '2024-03-15', status: 'queued', triggered_by: 'manual' },
    ]);
    const again = await cli(['trigger', '--date=2024-03-15'], env);
    expect(again.code).toBe(0);
    expect(again.out).toMatch(/a run for 2024-03-15 already exists: manual__2024-03-15 is queued/);
    expect(await runsOf(db, "logical_date = '2024-03-15'")).toHaveLength(1);
  });

  it('trigger again for a failed run exits 1 and changes nothing', async () => {
    await cli(['trigger', '--date', '2024-03-10'], env);
    await db.pool.query(`update l2flow.run set status = 'failed', finished_at = now() where logical_date = '2024-03-10'`);
    const r = await cli(['trigger', '--date', '2024-03-10'], env);
    expect(r.code).toBe(1);
    expect(r.out).toMatch(/already exists: manual__2024-03-10 is failed/);
    expect((await runsOf(db, "logical_date = '2024-03-10'"))[0]!.status).toBe('failed');
  });

  it('cancel marks a queued run cancelled; cancelling again, or a date without a run, exits 1', async () => {
    await cli(['trigger', '--date', '2024-04-20'], env);
    const r = await cli(['cancel', '--date', '2024-04-20'], env);
    expect(r.code).toBe(0);
    expect(r.out).toBe('cancelled manual__2024-04-20 (was queued)');
    expect((await runsOf(db, "logical_date = '2024-04-20'"))[0]!.status).toBe('cancelled');
    const again = await cli(['cancel', '--date', '2024-04-20'], env);
    expect(again.code).toBe(1);
    expect(again.err).toMatch(/already cancelled: nothing to cancel/);
    const none = await cli(['cancel', '--date', '2024-04-21'], env);
    expect(none.code).toBe(1);
    expect(none.err).toMatch(/no run for 2024-04-21/);
    expect((await cli(['cancel'], env)).code).toBe(2);
  });

  it('without --date queues today in the workflow timezone', async () => {
    const before = dateInZone('Asia/Tashkent');
    const r = await cli(['trigger'], { ...env, L2FLOW_TIMEZONE: 'Asia/Tashkent' });
    const after = dateInZone('Asia/Tashkent');
    expect(r.code).toBe(0);
    const date = /logical date (\d{4}-\d{2}-\d{2})/.exec(r.out)?.[1];
    expect([before, after]).toContain(date);
    expect(await runsOf(db, `logical_date = '${date}'`)).toHaveLength(1);
  });

  it('status lists the runs, newest first', async () => {
    const r = await cli(['status'], env);
    expect(r.code).toBe(0);
    const lines = r.out.split('\n');
    expect(lines[0]).toMatch(/^logical_date\s+status\s+load_id\s+1  2  3/);
    const march = lines.filter((l) => l.startsWith('2024-03-'));
    expect(march.map((l) => l.slice(0, 10))).toEqual(['2024-03-15', '2024-03-10']);
    expect(march[0]).toMatch(/^2024-03-15\s+queued/);
    expect(march[1]).toMatch(/^2024-03-10\s+failed/);
    const json = await cli(['status', '--json'], env);
    expect(json.code).toBe(0);
    const runs = JSON.parse(json.out) as { logical_date: string; status: string }[];
    expect(runs.find((x) => x.logical_date === '2024-03-15')?.status).toBe('queued');
  });

  it('status --date D --json prints the run with its steps as JSON', async () => {
    await db.pool.query(
      `insert into l2flow.step (run_id, step, attempt, status, started_at, finished_at)
       values ('manual__2024-03-15', 'wait_for_l2_full_load', 1, 'success', now() - interval '1 minute', now()),
              ('manual__2024-03-15', 'get_load_id', 1, 'running', now(), null)`,
    );
    const r = await cli(['status', '--date', '2024-03-15', '--json'], env);
    expect(r.code).toBe(0);
    const s = JSON.parse(r.out) as { run_id: string; status: string; logical_date: string; business_date: string; steps: { step: string; status: string }[]; failure_email: unknown[] };
    expect(s).toMatchObject({ run_id: 'manual__2024-03-15', status: 'queued', logical_date: '2024-03-15', business_date: '2024-03-14' });
    expect(s.steps.map((x) => [x.step, x.status])).toEqual([
      ['wait_for_l2_full_load', 'success'],
      ['get_load_id', 'running'],
    ]);
    expect(s.failure_email).toEqual([]);

    const text = await cli(['status', '--date', '2024-03-15'], env);
    expect(text.code).toBe(0);
    expect(text.out).toMatch(/^manual__2024-03-15 {2}queued/);
    expect(text.out).toMatch(/wait_for_l2_full_load\s+success/);
  });

  it('status --date of a date without a run exits 1', async () => {
    const r = await cli(['status', '--date', '2024-01-01'], env);
    expect(r.code).toBe(1);
    expect(r.out).toMatch(/no run for 2024-01-01: queue one with `l2flow trigger --date 2024-01-01`/);
    const json = await cli(['status', '--date', '2024-01-01', '--json'], env);
    expect(json.code).toBe(1);
    expect(JSON.parse(json.out)).toBeNull();
  });

  it('status --date with an impossible date exits 2', async () => {
    const r = await cli(['status', '--date', '2024-02-30'], env);
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/--date "2024-02-30" is not a date/);
  });

  it('an unreachable warehouse exits 1 naming the server, never the password', async () => {
    const noDb = withPassword(db.uri.replace(/\/[^/]*$/, '/l2flow_no_such_db'));
    const r = await cli(['status'], { L2FLOW_CONN_DWH: noDb });
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/l2flow_no_such_db.*database postgres:\/\/root:\*\*\*@127\.0\.0\.1:5432\/l2flow_no_such_db/s);
  });
});

describe('run refuses to start on a bad setup, leaving nothing behind', () => {
  it('a flag table without the trigger: exit 2, says to run `l2flow migrate`, no run created', async () => {
    const bare = await createTestDb({ migrate: false });
    try {
      await bare.pool.query('create schema md; create table md.dwh_flag (flag_cd text, bussines_date date)');
      const r = await cli(['run'], runEnv(withPassword(bare.uri)));
      expect(r.code).toBe(2);
      expect(r.err).toMatch(/flag table md\.dwh_flag has no l2flow notify trigger: run `l2flow migrate`/);
      const { rows } = await bare.pool.query(`select to_regclass('l2flow.run') is null as no_run_table`);
      expect(rows[0].no_run_table).toBe(true);
    } finally {
      await bare.drop();
    }
  });

  it('a migrated database whose trigger was dropped: exit 2 and no run created', async () => {
    const d = await createTestDb();
    try {
      await d.pool.query('drop trigger l2flow_dwh_flag_notify on md.dwh_flag');
      const r = await cli(['run'], runEnv(withPassword(d.uri)));
      expect(r.code).toBe(2);
      expect(r.err).toMatch(/run `l2flow migrate`/);
      expect(await runsOf(d)).toEqual([]);
    } finally {
      await d.drop();
    }
  });

  it('missing EMAIL_RECIPIENTS: exit 2 naming it, and no connection opened', async () => {
    // Counted, not looked for: a connection opened and closed before the command returned is gone from
    // pg_stat_activity, but not from pg_stat_database.sessions. A database of its own, so nothing else connects.
    const d = await createTestDb({ migrate: false });
    try {
      const before = await sessionsOpened(d.name);
      const r = await cli(['run'], runEnv(withPassword(d.uri), { EMAIL_RECIPIENTS: undefined }));
      expect(r.code).toBe(2);
      expect(r.err).toMatch(/EMAIL_RECIPIENTS: .*export EMAIL_RECIPIENTS=/);
      // One probe session of our own, opened after the command returned: once it is counted, any session the
      // command opened (counted at its first query, or at the latest when it closed) is counted too.
      const probe = new pg.Client({ connectionString: d.uri });
      await probe.connect();
      await probe.query('select 1');
      await probe.end();
      let after = before;
      for (const end = Date.now() + 10_000; after === before && Date.now() < end; await new Promise((res) => setTimeout(res, 50))) {
        after = await sessionsOpened(d.name);
      }
      expect(after - before, 'sessions opened on the database (the probe is one)').toBe(1);
    } finally {
      await d.drop();
    }
  });

  it('a malformed SAP connection: exit 2 naming the variable, password not shown', async () => {
    const r = await cli(['run'], runEnv(dwh, { L2FLOW_CONN_SAP_CONN: `ftp://sap:${SECRET}@sap.example/x` }));
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/L2FLOW_CONN_SAP_CONN: connection "sap_conn" has scheme "ftp"/);
  });

  it('an HTTP server on a non-loopback address without a token: exit 2 naming L2FLOW_API_TOKEN', async () => {
    const r = await cli(['run'], runEnv(dwh, { L2FLOW_HTTP_HOST: '0.0.0.0' }));
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/L2FLOW_API_TOKEN: the HTTP server binds 0\.0\.0\.0 .*need a token/);
  });

  it('an unknown child kind: exit 2 naming the key', async () => {
    const f = path.join(tmp, 'bad-kind.yaml');
    writeFileSync(f, 'children:\n  wf_data_preparation_for_reports: { kind: dag, dag_id: x }\n');
    const r = await cli(['run'], runEnv(dwh, { L2FLOW_CONFIG: f }));
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/children\.wf_data_preparation_for_reports\.kind \(in bad-kind\.yaml\): unknown child kind "dag"/);
  });
});

describe('the bin, as a process', () => {
  it('no command: usage and exit 2', async () => {
    const r = await spawnCli([], {});
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/usage: l2flow/);
  });

  it('an unknown flag: exit 2 on stderr', async () => {
    const r = await spawnCli(['status', '--verbose'], { L2FLOW_CONN_DWH: dwh });
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/unknown flag --verbose; valid flags: --date <value>, --json/);
  });

  it('diagram needs no configuration and no database: mermaid by default, json and svg on request', async () => {
    const m = await spawnCli(['diagram'], { L2FLOW_CONFIG: '/nonexistent/l2flow.yaml' });
    expect(m).toMatchObject({ code: 0, err: '' });
    expect(m.out).toMatch(/^stateDiagram-v2\n[\s\S]*send_flg_to_sap --> email_on_failure : error/);
    const j = await spawnCli(['diagram', '--format', 'json'], {});
    expect(JSON.parse(j.out)).toMatchObject({ id: 'wf', nodes: expect.any(Array), edges: expect.any(Array) });
    const s = await spawnCli(['diagram', '--format=svg'], {});
    expect(s.out).toMatch(/^<\?xml[\s\S]*<\/svg>\n$/);
    const bad = await spawnCli(['diagram', '--format', 'png'], {});
    expect(bad.code).toBe(2);
    expect(bad.err).toMatch(/--format png is not known; write --format mermaid\|json\|svg/);
  });

  it('trigger --date 2024-02-30: exit 2', async () => {
    const r = await spawnCli(['trigger', '--date', '2024-02-30'], { L2FLOW_CONN_DWH: dwh });
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/not a date: write YYYY-MM-DD/);
  });

  it('trigger then status --date --json', async () => {
    const t = await spawnCli(['trigger', '--date', '2024-04-01'], { L2FLOW_CONN_DWH: dwh });
    expect(t).toMatchObject({ code: 0 });
    expect(t.out).toMatch(/queued manual__2024-04-01/);
    const s = await spawnCli(['status', '--date', '2024-04-01', '--json'], { L2FLOW_CONN_DWH: dwh });
    expect(s.code).toBe(0);
    expect(JSON.parse(s.out)).toMatchObject({ run_id: 'manual__2024-04-01', status: 'queued', steps: [] });
    const none = await spawnCli(['status', '--date', '2024-04-02'], { L2FLOW_CONN_DWH: dwh });
    expect(none.code).toBe(1);
  });

  it('AIRFLOW_CONN_<ID> with a custom DWH_CONN_ID works as a fallback', async () => {
    const r = await spawnCli(['status', '--date', '2024-04-01', '--json'], { DWH_CONN_ID: 'warehouse', AIRFLOW_CONN_WAREHOUSE: dwh });
    expect(r.code).toBe(0);
    expect(JSON.parse(r.out)).toMatchObject({ run_id: 'manual__2024-04-01' });
  });

  it('run with missing EMAIL_RECIPIENTS: exit 2 naming it, without starting', async () => {
    const r = await spawnCli(['run'], runEnv(dwh, { EMAIL_RECIPIENTS: undefined }));
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/EMAIL_RECIPIENTS/);
    expect(r.out).toBe('');
  });

  it('a malformed warehouse URI: exit 2, password never printed', async () => {
    const r = await spawnCli(['migrate'], { L2FLOW_CONN_DWH: `postgres://root:${SECRET}@127.0.0.1:54x2/db` });
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/L2FLOW_CONN_DWH: connection "dwh" is not a valid URI/);
  });

  it('an unreachable warehouse: exit 1, password never printed', async () => {
    const r = await spawnCli(['status'], { L2FLOW_CONN_DWH: `postgres://root:${SECRET}@127.0.0.1:1/dwh` });
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/ECONNREFUSED|connect/);
    expect(r.err).toContain('postgres://root:***@127.0.0.1:1/dwh');
  });
});
