import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { Registry } from 'prom-client';
import { filter, firstValueFrom, timeout } from 'rxjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { L2flow, RunEvent } from 'l2flow';
import { createSegmentationView, createTestDb, type TestDb } from '../helpers/db.js';
import { ensureBuilt, ROOT, until } from '../helpers/process.js';
import { parseExposition, sampleSum } from '../helpers/prometheus.js';
import { startSapServer, type TestSapServer } from '../helpers/sap-server.js';
import { startSmtpServer, type TestSmtpServer } from '../helpers/smtp.js';

// The package by its name, as a host service imports it: Node and vitest resolve a package's self-reference
// through its `exports`, i.e. to the built dist/src/index.js, so the build must be current before the import.
ensureBuilt();
const { createL2flow, ConfigError, L2flowError } = await import('l2flow');

const D = '2024-05-02';
const FLAG = 'l1_to_l2_load_successfull';

let db: TestDb;
let sap: TestSapServer;
let smtp: TestSmtpServer;

beforeAll(async () => {
  db = await createTestDb({ migrate: false });
  await createSegmentationView(db.pool, 3);
  sap = await startSapServer();
  smtp = await startSmtpServer();
}, 60_000);

afterAll(async () => {
  await sap?.close();
  await smtp?.close();
  await db?.drop();
});

/** l2flow's connections to the test database still open (pool.end() resolves before the backends are gone). */
async function l2flowConnections(): Promise<number> {
  const { rows } = await db.pool.query<{ n: number }>(
    `select count(*)::int as n from pg_stat_activity where datname = current_database() and application_name like 'l2flow%' and application_name <> 'l2flow-test'`,
  );
  return rows[0]!.n;
}

describe('createL2flow, imported as the package l2flow', () => {
  it('runs a date to success from a config object, seen through events$ and getRun, and stops cleanly', async () => {
    const l2: L2flow = createL2flow({
      config: {
        workflow: { startDate: D, claimIntervalSeconds: 0.2 },
        http: { port: 0 }, // test files run in parallel: any free port, not 8780
        connections: { dwh: db.uri, sap_conn: `${sap.base}/sap/readiness?token=t0ken`, smtp_default: smtp.uri() },
        email: { recipients: ['dwh-team@bank.example'] },
        children: {
          wf_data_preparation_for_reports: { kind: 'sql', statement: 'select $1::date' },
          l1_to_l2_p_load_data_ds_client_segmentation_full: { kind: 'sql', statement: 'select $1::date, $2::bigint' },
        },
      },
      logger: { level: 'silent' },
    });
    expect(l2.config.connections.dwh).toBe(db.uri);

    // Subscribed before start(): nothing is missed, and completion tells that stop() is done.
    const events: RunEvent[] = [];
    let completed = false;
    l2.events$.subscribe({ next: (e) => events.push(e), complete: () => (completed = true) });

    try {
      await runToSuccess(l2, events);
    } finally {
      await l2.stop();
    }
    expect(completed).toBe(true);
    await l2.stop(); // twice is fine
    await expect(l2.listRuns()).rejects.toMatchObject({ code: 'NOT_AVAILABLE' });
    await until('l2flow to close its connections', async () => (await l2flowConnections()) === 0, 5000);
  });

  /** migrate, start, trigger, flag, success, read back. */
  async function runToSuccess(l2: L2flow, events: RunEvent[]): Promise<void> {
    const finished = firstValueFrom(l2.events$.pipe(filter((e) => e.type === 'finished' && e.logicalDate === D), timeout(20_000)));
    finished.catch(() => undefined); // awaited below; not an unhandled rejection if an earlier expectation fails
    await expect(l2.trigger(D)).rejects.toMatchObject({ code: 'NOT_MIGRATED' });
    expect((await l2.migrate()).applied.length).toBeGreaterThan(0);
    await l2.start();
    const { run, created } = await l2.trigger(D);
    expect(created).toBe(true);
    expect(run).toMatchObject({ run_id: `manual__${D}`, logical_date: D, business_date: '2024-05-01' });
    // Idempotent: the same date again returns the same run.
    expect(await l2.trigger(D)).toMatchObject({ created: false, run: { run_id: run.run_id } });

    await db.pool.query('insert into md.dwh_flag (flag_cd, bussines_date) values ($1, $2)', [FLAG, '2024-05-01']);
    expect(await finished).toMatchObject({ runId: run.run_id, status: 'success' });
    expect(events.filter((e) => e.runId === run.run_id).map((e) => e.type)).toEqual(expect.arrayContaining(['started', 'transition', 'finished']));

    const done = await l2.getRun(D);
    expect(done).toMatchObject({ status: 'success', current_step: 'success', error: null, failureEmail: [] });
    expect(done!.load_id).toMatch(/^\d+$/);
    expect(done!.steps.map((s) => [s.step, s.status])).toEqual(
      expect.arrayContaining([['wait_for_l2_full_load', 'success'], ['send_flg_to_sap', 'success'], ['end', 'success']]),
    );
    expect((await l2.listRuns({ limit: 5 })).map((r) => r.logical_date)).toContain(D);
    expect(await l2.getRun('2024-05-03')).toBeNull();
    expect(sap.requests).toHaveLength(1);

    // What a host's /metrics serves: this runtime's metrics and the process's.
    expect(l2.metrics.contentType).toBe(Registry.PROMETHEUS_CONTENT_TYPE); // declared without loading prom-client
    const metrics = parseExposition(await l2.metrics.text());
    expect(sampleSum(metrics, 'l2flow_runs', { status: 'success' })).toBe(1);
    expect(sampleSum(metrics, 'l2flow_step_duration_seconds_count', { step: 'end', status: 'success' })).toBe(1);
    expect(sampleSum(metrics, 'process_start_time_seconds')).toBeGreaterThan(0);
  }

  it('a bad config object throws a ConfigError naming the key, before anything connects', () => {
    const conns = { dwh: db.uri, sap_conn: sap.base, smtp_default: smtp.uri() };
    const bad = (config: object, key: string, message: RegExp) => {
      let thrown: unknown;
      try {
        createL2flow({ config: config as never, scope: 'dwh' });
      } catch (err) {
        thrown = err;
      }
      expect(thrown).toBeInstanceOf(ConfigError);
      expect(thrown).toMatchObject({ key, source: 'the config object' });
      expect((thrown as Error).message).toMatch(message);
    };
    bad({ connections: conns, sap: { maxTries: 'five' } }, 'sap.maxTries', /must be .*number \(unquoted\), not a string/);
    bad({ connections: conns, workflow: { startdate: '2024-01-01' } }, 'workflow.startdate', /unknown setting.*valid settings under workflow: timezone, startDate/);
    bad({ connections: conns, workflow: { timezone: 'Mars/Olympus' } }, 'workflow.timezone', /not an IANA time zone/);
    bad({ connections: { dwh: 'mysql://x' } }, 'connections.dwh', /must use postgres/);
    // Without `config` the environment is the whole configuration, as for the CLI.
    expect(() => createL2flow({ env: {} })).toThrow(/L2FLOW_CONN_DWH/);
  });

  it('API calls fail with a stable code', async () => {
    const l2 = createL2flow({ config: { connections: { dwh: db.uri } }, scope: 'dwh' });
    await expect(l2.trigger('2024-02-30')).rejects.toMatchObject({ code: 'INVALID_DATE' });
    await expect(l2.trigger('2020-01-01')).rejects.toMatchObject({ code: 'BEFORE_START_DATE' });
    await expect(l2.start()).rejects.toBeInstanceOf(L2flowError);
    await l2.stop();
  });

  it("README's Embedding example runs as its own process, reaches success and exits by itself after SIGTERM", async () => {
    const readme = readFileSync(path.join(ROOT, 'README.md'), 'utf8');
    const example = /## Embedding[\s\S]*?```js\n([\s\S]*?)```/.exec(readme)?.[1];
    expect(example, 'the ```js block under ## Embedding').toContain("from 'l2flow'");
    await db.pool.query(`create schema if not exists l2;
      create table if not exists l2.calls (child text, logical_date date, load_id bigint);
      create or replace procedure l2.wf_data_preparation_for_reports(d date, id bigint) language sql as $$ insert into l2.calls values ('reports', d, id) $$;
      create or replace procedure l2.load_ds_client_segmentation(d date, id bigint) language sql as $$ insert into l2.calls values ('segmentation', d, id) $$;
      insert into md.dwh_flag (flag_cd, bussines_date) values ('${FLAG}', '2024-03-14');`);
    // `node -e` from the package root resolves 'l2flow' through package.json `exports`, as a dependent would.
    const child = spawn(process.execPath, ['--input-type=module', '-e', example!], {
      cwd: ROOT,
      env: {
        PATH: process.env.PATH ?? '',
        L2FLOW_CONN_DWH: db.uri,
        L2FLOW_CONN_SAP_CONN: `${sap.base}/sap/readiness`,
        L2FLOW_CONN_SMTP_DEFAULT: smtp.uri(),
        EMAIL_RECIPIENTS: 'dwh-team@bank.example',
        L2FLOW_LOG_LEVEL: 'warn',
        L2FLOW_HTTP_PORT: '0',
      },
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    try {
      await until('the example to print the run of 2024-03-15 finished with success', async () => {
        if (child.exitCode !== null) throw new Error(`the example exited with ${child.exitCode}:\n${out}\n${err}`);
        return /2024-03-15 finished success/.test(out);
      }, 20_000).catch((e: Error) => Promise.reject(new Error(`${e.message}\n${out}\n${err}`)));
      child.kill('SIGTERM');
      // Nothing calls process.exit: the process ends only once stop() has closed every connection and timer.
      const code = await Promise.race([exited, new Promise((r) => setTimeout(() => r('still running 10 s after SIGTERM'), 10_000))]);
      expect(code, `${out}\n${err}`).toBe(0);
    } finally {
      child.kill('SIGKILL');
    }
    const { rows } = await db.pool.query(`select child from l2.calls where logical_date = '2024-03-15' order by child`);
    expect(rows.map((r) => r.child)).toEqual(['reports', 'segmentation']);
  });
});
