import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { addDays } from '../../src/lib/dates.js';
import { createL2flow, type L2flow } from '../../src/index.js';
import { migrate } from '../../src/runtime/migrate.js';
import { createRun } from '../../src/runtime/run-store.js';
import { createSegmentationView } from '../helpers/db.js';
import { startPrivatePg, type PrivatePg } from '../helpers/private-pg.js';
import { until } from '../helpers/process.js';
import { startSapServer, type TestSapServer } from '../helpers/sap-server.js';
import { startSmtpServer, type TestSmtpServer } from '../helpers/smtp.js';

// A DBA gives l2flow a fixed connection budget. Here the server has max_connections 25 for everyone, and 200 runs
// with max_active_runs 200 are released by one statement: the runtime must live inside
// poolSize + listener + lock connection + child statements executing (at most childConnections), however many runs.

const WF = 'WF_MAIN_DATASETS_LOAD_L2_TO_L2';
const FLAG = 'l1_to_l2_load_successfull';
const RUNS = 200;
const POOL_SIZE = 5;
const CHILD_CONNECTIONS = 3;
const FIRST = '2024-01-01';

describe('connections stay within the budget whatever max_active_runs is', () => {
  let server: PrivatePg;
  let sap: TestSapServer;
  let smtp: TestSmtpServer;
  let dir: string;

  beforeAll(async () => {
    server = await startPrivatePg({ extraConf: { max_connections: 25 } });
    sap = await startSapServer();
    smtp = await startSmtpServer();
    dir = mkdtempSync(path.join(tmpdir(), 'l2flow-budget-'));
  }, 60_000);
  afterAll(async () => {
    await sap?.close();
    await smtp?.close();
    await server?.destroy();
    rmSync(dir, { recursive: true, force: true });
  });

  /** A fresh warehouse database on the private server, with 200 runs parked before any flag exists. */
  async function warehouse(name: string): Promise<{ uri: string; admin: pg.Client }> {
    const root = new pg.Client({ connectionString: server.uri() });
    await root.connect();
    await root.query(`create database ${name}`);
    await root.end();
    const uri = server.uri(name);
    const setup = new pg.Pool({ connectionString: uri, max: 1 });
    await migrate(setup, { flagTable: 'md.dwh_flag' });
    await createSegmentationView(setup, 3);
    await setup.end();
    const admin = new pg.Client({ connectionString: uri, application_name: 'budget-test' });
    await admin.connect();
    for (let i = 0; i < RUNS; i++) {
      const d = addDays(FIRST, i);
      await createRun(admin, { workflowId: WF, logicalDate: d, businessDate: addDays(d, -1), triggeredBy: 'manual' });
    }
    return { uri, admin };
  }

  /** `n` runtimes through the embedding API, the path `l2flow run` takes too. */
  function startApps(uri: string, n: number, lines: string[]): Promise<L2flow[]> {
    const file = path.join(dir, `budget-${n}.json`);
    writeFileSync(file, JSON.stringify({
      workflow: { maxActiveRuns: RUNS, poolSize: POOL_SIZE, childConnections: CHILD_CONNECTIONS, startDate: FIRST, claimIntervalSeconds: 0.5 },
      // Every run's predecessor date falls before startDate: the 200 runs do not chain, they all run at once.
      sensors: { wait_for_l2_full_load: { pokeIntervalSeconds: 60 }, wait_for_success_end: { executionDeltaDays: 1000 } },
      children: {
        wf_data_preparation_for_reports: { kind: 'sql', statement: 'select $1::date' },
        // Holds its connection a moment, so child statements of many runs overlap.
        l1_to_l2_p_load_data_ds_client_segmentation_full: { kind: 'sql', statement: 'select pg_sleep(0.05), $1::date' },
      },
      pools: { dwh_l2: { slots: 2 } },
      sap: { retryBaseDelayMs: 20 },
    }));
    const env = {
      L2FLOW_CONN_DWH: uri,
      L2FLOW_CONN_SAP_CONN: `${sap.base}/readiness`,
      L2FLOW_CONN_SMTP_DEFAULT: smtp.uri(),
      EMAIL_RECIPIENTS: 'dwh-team@bank.example',
      L2FLOW_CONFIG: file,
      L2FLOW_HTTP_PORT: '0',
    };
    return Promise.all(
      Array.from({ length: n }, async () => {
        const l2 = createL2flow({ env, logger: { level: 'info', destination: { write: (s: string) => void lines.push(s) } } });
        expect(l2.config).toMatchObject({ poolSize: POOL_SIZE, childConnections: CHILD_CONNECTIONS, maxActiveRuns: RUNS });
        await l2.start();
        return l2;
      }),
    );
  }

  /** Most l2flow backends seen at once, sampled while the runs execute (the sampler's own connection excluded). */
  function sampleConnections(admin: pg.Client) {
    let max = 0;
    let maxByApp: Record<string, number> = {};
    let stopped = false;
    const loop = (async () => {
      while (!stopped) {
        const { rows } = await admin.query<{ app: string; n: number }>(
          `select application_name as app, count(*)::int as n from pg_stat_activity
            where datname = current_database() and application_name like 'l2flow%' group by 1`,
        );
        const total = rows.reduce((s, r) => s + r.n, 0);
        if (total > max) {
          max = total;
          maxByApp = Object.fromEntries(rows.map((r) => [r.app, r.n]));
        }
        await new Promise((r) => setTimeout(r, 20));
      }
    })();
    return {
      async stop() {
        stopped = true;
        await loop;
        return { max, maxByApp };
      },
    };
  }

  async function releaseAll(runtimes: number): Promise<void> {
    const { uri, admin } = await warehouse(`budget_${runtimes}`);
    const lines: string[] = [];
    const apps = await startApps(uri, runtimes, lines);
    try {
      const count = async (where: string) =>
        (await admin.query<{ n: number }>(`select count(*)::int as n from l2flow.run where ${where}`)).rows[0]!.n;
      await until('every run to park in wait_for_l2_full_load', async () =>
        (await count(`current_step = 'wait_for_l2_full_load'`)) === RUNS, 120_000, 200);
      // Parked runs hold no connection: what is open now is the pool's idle ones, listener and lock connection.
      const sampler = sampleConnections(admin);
      await admin.query(
        `insert into md.dwh_flag (flag_cd, bussines_date)
         select $1, $2::date + g - 1 from generate_series(0, $3::int - 1) g`,
        [FLAG, FIRST, RUNS],
      );
      await until('every run to end', async () => (await count(`status in ('success', 'failed')`)) === RUNS, 240_000, 250);
      const { max, maxByApp } = await sampler.stop();
      console.log(`[budget] ${runtimes} runtime(s): ${RUNS} runs done, at most ${max} l2flow connections at once ${JSON.stringify(maxByApp)}`);

      expect(await count(`status = 'success'`)).toBe(RUNS);
      const budget = runtimes * (POOL_SIZE + 2 + CHILD_CONNECTIONS);
      expect(max, JSON.stringify(maxByApp)).toBeLessThanOrEqual(budget);
      expect((maxByApp['l2flow'] ?? 0)).toBeLessThanOrEqual(runtimes * POOL_SIZE);
      expect((maxByApp['l2flow-child'] ?? 0)).toBeLessThanOrEqual(runtimes * CHILD_CONNECTIONS);
      // The SQLSTATE as pg reports it (not any '53300' inside a timestamp), or its message.
      expect(lines.filter((l) => /"53300"|SQLSTATE 53300|too many clients/.test(l))).toEqual([]);
      expect(server.serverLog()).not.toMatch(/too many clients/);
      // SAP got one readiness POST per run: nothing was dropped or repeated under the squeeze.
      expect(new Set(sap.requests.map((r) => r.headers['idempotency-key'])).size).toBe(RUNS);
    } finally {
      await Promise.all(apps.map((a) => a.stop()));
      await admin.end();
    }
  }

  it('one runtime: 200 runs released by one INSERT all succeed within poolSize 5 + 2 + 3 child connections', async () => {
    await releaseAll(1);
  }, 300_000);

  it('two runtimes on one database: the same, each within its own budget', async () => {
    sap.requests.length = 0;
    await releaseAll(2);
  }, 300_000);
});
