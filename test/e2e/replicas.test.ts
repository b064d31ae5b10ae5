import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { addDays } from '../../src/lib/dates.js';
import { createSegmentationView, createTestDb, type TestDb } from '../helpers/db.js';
import { ensureBuilt, runCli, startRuntime, until, type Runtime } from '../helpers/process.js';
import { startSapServer, type TestSapServer } from '../helpers/sap-server.js';
import { startSmtpServer, type TestSmtpServer } from '../helpers/smtp.js';

// Three `l2flow run` processes on one database: each run executed by exactly one of them; when one dies,
// the others take its runs over and finish them from their snapshots.

const FIRST = '2024-09-01';
const DATES = Array.from({ length: 6 }, (_, i) => addDays(FIRST, i));
const CLAIM_INTERVAL_S = 1;

interface LogLine {
  msg?: string;
  runId?: string;
  owner?: string;
}

describe('several replicas on one database', () => {
  let db: TestDb;
  let sap: TestSapServer;
  let smtp: TestSmtpServer;
  let env: Record<string, string>;
  let dir: string;
  const replicas: Runtime[] = [];

  beforeAll(async () => {
    ensureBuilt();
    db = await createTestDb();
    await createSegmentationView(db.pool, 5);
    sap = await startSapServer();
    smtp = await startSmtpServer();
    dir = mkdtempSync(path.join(tmpdir(), 'l2flow-replicas-'));
    const configFile = path.join(dir, 'l2flow.yaml');
    writeFileSync(
      configFile,
      `workflow:
  startDate: "${FIRST}"
  claimIntervalSeconds: ${CLAIM_INTERVAL_S}
children:
  wf_data_preparation_for_reports: { kind: sql, statement: "select $1::date, $2::bigint" }
  l1_to_l2_p_load_data_ds_client_segmentation_full: { kind: sql, statement: "select $1::date, $2::bigint" }
`,
    );
    env = {
      L2FLOW_CONN_DWH: db.uri,
      L2FLOW_CONN_SAP_CONN: `${sap.base}/readiness`,
      L2FLOW_CONN_SMTP_DEFAULT: smtp.uri(),
      EMAIL_RECIPIENTS: 'team@bank.example',
      L2FLOW_CONFIG: configFile,
    };
  });

  afterAll(async () => {
    await Promise.all(replicas.map((r) => r.stop('SIGKILL')));
    await sap?.close();
    await smtp?.close();
    await db?.drop();
    rmSync(dir, { recursive: true, force: true });
  });

  const parsed = (r: Runtime): LogLine[] =>
    r.logs.flatMap((l) => {
      try {
        return [JSON.parse(l) as LogLine];
      } catch {
        return [];
      }
    });
  const owners = async () =>
    new Map((await db.pool.query<{ run_id: string; owner: string | null }>(`select run_id, owner from l2flow.run`)).rows.map((r) => [r.run_id, r.owner]));

  it('runs each run in exactly one process and takes over the runs of a killed process', async () => {
    for (let i = 0; i < 3; i++) replicas.push(startRuntime(env));
    await until('three runtimes to be up', async () => replicas.every((r) => r.logs.some((l) => l.includes('waiting for runs'))));
    for (const d of DATES) expect((await runCli(['trigger', '--date', d], env)).code).toBe(0);

    // With no flag rows, every run parks in wait_for_l2_full_load.
    await until('all runs to be claimed', async () => [...(await owners()).values()].every((o) => o !== null));
    await until('all runs to wait for their flag', async () =>
      (await db.pool.query(`select count(*)::int as n from l2flow.run where current_step = 'wait_for_l2_full_load'`)).rows[0].n === DATES.length);
    const startedBy = new Map<string, number[]>();
    replicas.forEach((r, i) => {
      for (const l of parsed(r)) if (l.runId && (l.msg === 'run started' || l.msg === 'run restored from its snapshot')) startedBy.set(l.runId, [...(startedBy.get(l.runId) ?? []), i]);
    });
    expect(startedBy.size).toBe(DATES.length);
    for (const procs of startedBy.values()) expect(procs).toHaveLength(1);
    const ownedBefore = await owners();

    // Kill the replica that owns the most runs, the hard way.
    const counts = replicas.map((_, i) => [...startedBy.values()].filter((p) => p[0] === i).length);
    const victim = counts.indexOf(Math.max(...counts));
    const victimRuns = [...startedBy.entries()].filter(([, p]) => p[0] === victim).map(([id]) => id);
    const killedAt = Date.now();
    await replicas[victim]!.stop('SIGKILL');
    await until('the dead replica\'s runs to be taken over', async () => {
      const now = await owners();
      return victimRuns.every((id) => now.get(id) !== ownedBefore.get(id));
    }, 10_000, 10);
    const takeoverMs = Date.now() - killedAt;
    console.log(`take-over of ${victimRuns.length} run(s) after SIGKILL: ${takeoverMs} ms (claim interval ${CLAIM_INTERVAL_S} s)`);
    expect(takeoverMs).toBeLessThan(CLAIM_INTERVAL_S * 1000 + 1500);

    for (const d of DATES) {
      await db.pool.query(`insert into md.dwh_flag (flag_cd, bussines_date) values ('l1_to_l2_load_successfull', $1)`, [addDays(d, -1)]);
    }
    await until('every run to succeed', async () =>
      (await db.pool.query(`select count(*)::int as n from l2flow.run where status = 'success'`)).rows[0].n === DATES.length, 20_000);

    const keys = sap.byKey();
    expect(keys.size).toBe(DATES.length);
    for (const reqs of keys.values()) expect(reqs).toHaveLength(1);
    expect(new Set(sap.requests.map((r) => JSON.parse(r.body).logical_date))).toEqual(new Set(DATES));
    const md = (await db.pool.query(`select
        (select count(*)::int from md.data_load_session where status_cd = 's') as sessions,
        (select count(*)::int from md.job_session where status_cd = 's') as jobs,
        (select count(*)::int from md.session_log) as log_lines,
        (select count(distinct load_id)::int from l2flow.run) as load_ids`)).rows[0];
    expect(md).toEqual({ sessions: DATES.length, jobs: DATES.length, log_lines: 2 * DATES.length, load_ids: DATES.length });
    expect(smtp.messages).toHaveLength(0);
  });
});
