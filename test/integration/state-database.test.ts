import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import pg from 'pg';
import { createL2flow, type L2flow } from '../../src/index.js';
import { createReadiness } from '../../src/runtime/http/readiness.js';
import { createSegmentationView, createSplitTestDbs, schemasOf, type SplitDbs } from '../helpers/db.js';
import { until } from '../helpers/process.js';
import { startSapServer, type TestSapServer } from '../helpers/sap-server.js';
import { startSmtpServer, type TestSmtpServer } from '../helpers/smtp.js';

/**
 * l2flow's own tables in a database of their own (L2FLOW_CONN_STATE), through the embedding API as a deployment
 * runs it: migrate, start, trigger. Both sensors wait longer than the test (poke intervals of minutes), so a run
 * that finishes was woken by NOTIFY: the flag from the warehouse, the previous run's success from the state database.
 */

const WF = 'WF_MAIN_DATASETS_LOAD_L2_TO_L2';
const FLAG = 'l1_to_l2_load_successfull';
const D1 = '2024-05-10';
const D2 = '2024-05-11';

describe('a separate state database (connection id state)', () => {
  let split: SplitDbs;
  let sap: TestSapServer;
  let smtp: TestSmtpServer;
  let l2: L2flow;
  const lines: string[] = [];

  beforeAll(async () => {
    split = await createSplitTestDbs({ migrate: false });
    await split.dwh.pool.query('create table child_effects (child text, d date)');
    sap = await startSapServer();
    smtp = await startSmtpServer();
    l2 = createL2flow({
      env: {
        L2FLOW_CONN_DWH: split.dwh.uri,
        L2FLOW_CONN_STATE: split.state.uri,
        L2FLOW_CONN_SAP_CONN: `${sap.base}/sap/readiness?token=t0ken-state-test`,
        L2FLOW_CONN_SMTP_DEFAULT: smtp.uri(),
        EMAIL_RECIPIENTS: 'ops@bank.example',
        L2FLOW_START_DATE: D1,
        L2FLOW_HTTP_ENABLED: 'false',
      },
      config: {
        workflow: { claimIntervalSeconds: 0.2 },
        children: {
          wf_data_preparation_for_reports: { kind: 'sql', statement: `insert into child_effects values ('reports', $1::date)` },
          l1_to_l2_p_load_data_ds_client_segmentation_full: { kind: 'sql', statement: `insert into child_effects values ('segmentation', $1::date)` },
        },
        sensors: { wait_for_l2_full_load: { pokeIntervalSeconds: 600 }, wait_for_success_end: { pokeIntervalSeconds: 600 } },
      },
      logger: { level: 'debug', destination: { write: (s: string) => void lines.push(s) } },
    });
    await l2.migrate();
    await createSegmentationView(split.dwh.pool, 3);
  });
  afterAll(async () => {
    await l2?.stop();
    await sap?.close();
    await smtp?.close();
    await split?.drop();
  });

  const run = async (date: string) => (await l2.getRun(date))!;
  const step = (date: string, name: string) => until(`${date} at ${name}`, async () => (await run(date)).current_step?.split(',').includes(name));
  const flag = (businessDate: string) =>
    split.dwh.pool.query('insert into md.dwh_flag (flag_cd, bussines_date) values ($1, $2)', [FLAG, businessDate]);

  it('runs to success, wakes both sensors by NOTIFY, and keeps l2flow.* in the state database and md.* in the warehouse', async () => {
    await l2.start();
    expect(lines.join('')).toContain('"stateDatabase":"separate (connection state)"');
    // D2 has its flag and waits for D1's success; D1 waits for its flag.
    await flag('2024-05-10');
    await l2.trigger(D2);
    await step(D2, 'wait_for_success_end');
    await l2.trigger(D1);
    await step(D1, 'wait_for_l2_full_load');
    const t0 = Date.now();
    await flag('2024-05-09');
    for (const d of [D1, D2]) {
      const r = await until(`the run of ${d} to end`, async () => {
        const x = await run(d);
        return x.status === 'success' || x.status === 'failed' ? x : null;
      }, 30_000);
      expect(r.status, JSON.stringify(r.error)).toBe('success');
    }
    // Far below either poke interval (10 minutes): both waits ended on a notification.
    expect(Date.now() - t0).toBeLessThan(60_000);

    expect(await schemasOf(split.dwh.pool, ['l2flow', 'md'])).toEqual(['md']);
    expect(await schemasOf(split.state.pool, ['l2flow', 'md'])).toEqual(['l2flow']);
    const dwh = async (sql: string) => (await split.dwh.pool.query(sql)).rows;
    const state = async (sql: string) => (await split.state.pool.query(sql)).rows;
    // Load ids come from the warehouse's sequence and are kept on l2flow's run rows.
    const runs = await state(`select logical_date::text as d, load_id::int as l, status from l2flow.run order by 1`);
    expect(runs).toEqual([{ d: D1, l: expect.any(Number), status: 'success' }, { d: D2, l: expect.any(Number), status: 'success' }]);
    expect(await dwh(`select load_id::int as l, status_cd from md.data_load_session order by load_id`))
      .toEqual(runs.map((r) => ({ l: r.l, status_cd: 's' })).sort((a, b) => a.l - b.l));
    expect(await dwh(`select workflow_cd, status_cd from md.job_session order by load_id`)).toEqual([
      { workflow_cd: WF, status_cd: 's' }, { workflow_cd: WF, status_cd: 's' }]);
    // Each child's effect committed once per run; each memo is in the state database, no intent is left.
    expect(await dwh(`select child, d::text from child_effects order by d, child`)).toEqual([
      { child: 'reports', d: D1 }, { child: 'segmentation', d: D1 }, { child: 'reports', d: D2 }, { child: 'segmentation', d: D2 }]);
    expect(await state(`select count(*)::int as n from l2flow.step_memo where step in ('workflow_registration', 'end', 'child:wf_data_preparation_for_reports')`))
      .toEqual([{ n: 6 }]);
    expect(await state(`select count(*)::int as n from l2flow.step_intent`)).toEqual([{ n: 0 }]);
    expect(sap.requests).toHaveLength(2);
    // The connection budget per database: the locks and a listener on the state database, a listener and the
    // children on the warehouse, each pool within poolSize (10).
    const apps = async (pool: typeof split.dwh.pool) => Object.fromEntries((await pool.query<{ a: string; n: number }>(
      `select application_name as a, count(*)::int as n from pg_stat_activity
        where datname = current_database() and application_name like 'l2flow%' group by 1`)).rows.map((r) => [r.a, r.n]));
    const onState = await apps(split.state.pool);
    const onDwh = await apps(split.dwh.pool);
    expect(onState).toMatchObject({ 'l2flow-locks': 1, 'l2flow-listener': 1 });
    expect(onState['l2flow-child']).toBeUndefined();
    expect(onDwh).toMatchObject({ 'l2flow-listener': 1 });
    expect(onDwh['l2flow-locks']).toBeUndefined();
    for (const counts of [onState, onDwh]) expect(counts.l2flow ?? 0).toBeLessThanOrEqual(10);
    // The warehouse's pool has gauges of its own.
    expect(await l2.metrics.text()).toMatch(/^l2flow_db_pool_idle\{pool="warehouse"[^}]*\} \d+$/m);
  });

  it('readiness asks both databases and names the warehouse when it does not answer', async () => {
    const ok = await createReadiness({ pool: split.state.pool, dwh: split.dwh.pool, listenerConnected: () => true })();
    expect(ok).toMatchObject({ ok: true, checks: { database: { ok: true }, migrations: { ok: true } } });
    const gone = new pg.Pool({ connectionString: split.dwh.uri.replace(/\/[^/]*$/, '/l2flow_no_such_db'), max: 1 });
    try {
      const r = await createReadiness({ pool: split.state.pool, dwh: gone, listenerConnected: () => true })();
      expect(r.ok).toBe(false);
      expect(r.checks.database.error).toMatch(/^the warehouse: .*l2flow_no_such_db/);
      expect(r.checks.migrations.ok).toBe(true);
    } finally {
      await gone.end();
    }
  });
});
