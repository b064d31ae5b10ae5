import { writeFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createSegmentationView, createTestDb, type TestDb } from '../helpers/db.js';
import { ensureBuilt, runCli, startRuntime, until, type Runtime } from '../helpers/process.js';
import { startSapServer, type TestSapServer } from '../helpers/sap-server.js';
import { startSmtpServer, type TestSmtpServer } from '../helpers/smtp.js';

// End to end: the real `l2flow run` process, a real warehouse database, a real SAP HTTP server and a real SMTP server.

const D = '2024-03-15';
const DB_PASSWORD = 'e2e-Db-Pa55word';
const SAP_TOKEN = 'e2e-Sap-T0ken-xyz';
const SMTP_PASSWORD = 'e2e-Smtp-Pa55';

describe('l2flow run, end to end', () => {
  let db: TestDb;
  let sap: TestSapServer;
  let smtp: TestSmtpServer;
  let env: Record<string, string>;
  let runtime: Runtime | null = null;
  let dir: string;

  beforeAll(async () => {
    ensureBuilt();
    db = await createTestDb();
    await createSegmentationView(db.pool, 7);
    await db.pool.query(`create schema dwh;
      create table dwh.child_calls (child text, logical_date date, load_id bigint, at timestamptz default clock_timestamp());
      create role l2flow_e2e_${db.name} login password '${DB_PASSWORD}' superuser`);
    sap = await startSapServer();
    smtp = await startSmtpServer({ user: 'mailer', password: SMTP_PASSWORD });
    dir = mkdtempSync(path.join(tmpdir(), 'l2flow-e2e-'));
    const configFile = path.join(dir, 'l2flow.yaml');
    writeFileSync(
      configFile,
      `workflow:
  startDate: "${D}"
children:
  wf_data_preparation_for_reports:
    kind: sql
    statement: "insert into dwh.child_calls (child, logical_date, load_id) values ('reports', $1, $2)"
  l1_to_l2_p_load_data_ds_client_segmentation_full:
    kind: sql
    statement: "insert into dwh.child_calls (child, logical_date, load_id) values ('segmentation', $1, $2)"
sap:
  retryBaseDelayMs: 20
`,
    );
    const dwhUri = db.uri.replace('postgres://root@', `postgres://l2flow_e2e_${db.name}:${DB_PASSWORD}@`);
    env = {
      L2FLOW_CONN_DWH: dwhUri,
      L2FLOW_CONN_SAP_CONN: `${sap.base}/sap/readiness?token=${SAP_TOKEN}`,
      AIRFLOW_CONN_SMTP_DEFAULT: smtp.uri('mailer', SMTP_PASSWORD),
      EMAIL_RECIPIENTS: 'dwh-team@bank.example,oncall@bank.example',
      L2FLOW_CONFIG: configFile,
      L2FLOW_LOG_LEVEL: 'debug',
    };
  });

  afterEach(async () => {
    if (runtime) expect(await runtime.stop()).toBe(0);
    runtime = null;
  });

  afterAll(async () => {
    await sap?.close();
    await smtp?.close();
    await db?.pool.query(`drop role if exists l2flow_e2e_${db.name}`).catch(() => undefined);
    await db?.drop();
    rmSync(dir, { recursive: true, force: true });
  });

  const runRow = async (date: string) =>
    (await db.pool.query(`select * from l2flow.runs where logical_date = $1`, [date])).rows[0] as
      | { status: string; current_step: string | null; load_id: string | null; error: string | null }
      | undefined;

  function assertNoSecrets(text: string) {
    for (const secret of [DB_PASSWORD, SAP_TOKEN, SMTP_PASSWORD]) expect(text).not.toContain(secret);
  }

  it('waits for the flag, then runs every step: SAP gets the SPEC payload once, metadata is written, the run succeeds', async () => {
    expect((await runCli(['migrate'], env)).code).toBe(0);
    runtime = startRuntime(env);
    const trigger = await runCli(['trigger', '--date', D], env);
    expect(trigger.code).toBe(0);
    expect(trigger.stdout).toContain(`queued manual__${D}`);

    await until('the run to wait for the flag', async () => (await runRow(D))?.current_step === 'wait_for_l2_full_load');
    // The poke interval is 60 s: finishing well within it proves the NOTIFY path woke the sensor.
    const flaggedAt = Date.now();
    await db.pool.query(`insert into md.dwh_flag (flag_cd, bussines_date) values ('l1_to_l2_load_successfull', '2024-03-14')`);
    const done = await until('the run to finish', async () => {
      const r = await runRow(D);
      return r && ['success', 'failed'].includes(r.status) ? r : null;
    });
    expect(done.error).toBeNull();
    expect(done.status).toBe('success');
    expect(Date.now() - flaggedAt).toBeLessThan(15_000);

    expect(sap.requests).toHaveLength(1);
    const req = sap.requests[0]!;
    expect(req.method).toBe('POST');
    expect(req.url).toBe('/sap/readiness');
    expect(req.headers.authorization).toBe(`Bearer ${SAP_TOKEN}`);
    expect(req.headers['content-type']).toContain('application/json');
    const loadId = Number(done.load_id);
    expect(req.headers['idempotency-key']).toBe(`WF_MAIN_DATASETS_LOAD_L2_TO_L2:${D}:${loadId}:1`);
    const body = JSON.parse(req.body);
    expect(Object.keys(body)).toEqual(['calc_ended', 'calc_date', 'calc_rows', 'logical_date', 'source_sys_cd', 'code_flg']);
    expect(body).toMatchObject({ calc_ended: 'X', calc_rows: '7', logical_date: D, source_sys_cd: 'DWH', code_flg: 'l2_to_SAP_successful' });
    expect(body.calc_date).toMatch(/^\d{4}-\d{2}-\d{2}$/);

    const md = async (sql: string) => (await db.pool.query(sql)).rows;
    expect(await md(`select workflow_cd, layer_cd from md.workflow`)).toEqual([{ workflow_cd: 'WF_MAIN_DATASETS_LOAD_L2_TO_L2', layer_cd: 'l2' }]);
    expect(await md(`select load_id::int, business_date::text, status_cd from md.data_load_session`)).toEqual([
      { load_id: loadId, business_date: '2024-03-14', status_cd: 's' },
    ]);
    expect(await md(`select load_id::int, run_id, status_cd from md.job_session`)).toEqual([{ load_id: loadId, run_id: `manual__${D}`, status_cd: 's' }]);
    const log = await md(`select level_cd, message from md.session_log order by log_id`);
    expect(log.map((l) => l.level_cd)).toEqual(['i', 'i']);
    expect(log[0].message).toMatch(/^start -> task_id=workflow_registration, dag_id=WF_MAIN_DATASETS_LOAD_L2_TO_L2, log_url=/);
    expect(log[1].message).toMatch(/^successful -> task_id=end/);
    expect(await md(`select child, logical_date::text, load_id::int from dwh.child_calls order by child`)).toEqual([
      { child: 'reports', logical_date: D, load_id: loadId },
      { child: 'segmentation', logical_date: D, load_id: loadId },
    ]);
    const steps = await md(`select step, status from l2flow.step where run_id = 'manual__${D}' order by started_at, step`);
    expect(steps.map((s) => s.step)).toEqual(expect.arrayContaining(['wait_for_l2_full_load', 'send_flg_to_sap', 'end']));
    expect(steps.every((s) => s.status === 'success')).toBe(true);
    expect(smtp.messages).toHaveLength(0);

    const status = await runCli(['status', '--date', D, '--json'], env);
    expect(status.code).toBe(0);
    expect(JSON.parse(status.stdout)).toMatchObject({ status: 'success', load_id: loadId });
    assertNoSecrets(runtime.logs.join('\n') + runtime.stderr.join('') + status.stdout + status.stderr);
  });

  it('SAP answering 400 ends the run failed with exactly one email naming send_flg_to_sap', async () => {
    const next = '2024-03-16';
    sap.setHandler((res) => res.writeHead(400, { 'content-type': 'application/json' }).end('{"error":"calc_date in the future"}'));
    const before = sap.requests.length;
    runtime = startRuntime(env);
    expect((await runCli(['trigger', '--date', next], env)).code).toBe(0);
    await db.pool.query(`insert into md.dwh_flag (flag_cd, bussines_date) values ('l1_to_l2_load_successfull', '2024-03-15')`);
    const done = await until('the run to fail', async () => {
      const r = await runRow(next);
      return r && ['success', 'failed'].includes(r.status) ? r : null;
    });
    expect(done.status).toBe('failed');
    expect(done.error).toContain('send_flg_to_sap');
    expect(done.error).toContain('400');
    expect(sap.requests.length - before).toBe(1);

    const [mail] = await smtp.waitForMessages(1, 10_000);
    await new Promise((r) => setTimeout(r, 300));
    expect(smtp.messages).toHaveLength(1);
    expect(mail!.envelopeTo.sort()).toEqual(['dwh-team@bank.example', 'oncall@bank.example']);
    expect(mail!.user).toBe('mailer');
    expect(mail!.subject).toContain('send_flg_to_sap');
    expect(mail!.subject).toContain(next);
    expect(mail!.text).toContain('WF_MAIN_DATASETS_LOAD_L2_TO_L2');
    expect(mail!.text).toContain(String(done.load_id));
    expect(mail!.text).toContain('400');
    expect(mail!.html).toContain('send_flg_to_sap');
    assertNoSecrets(mail!.text + mail!.html + mail!.subject);

    const md = (await db.pool.query(`select status_cd from md.data_load_session where load_id = $1`, [done.load_id])).rows;
    expect(md).toEqual([{ status_cd: 'f' }]);
    const status = await runCli(['status', '--date', next], env);
    expect(status.stdout).toContain('failed');
    expect(status.stdout).toMatch(/failure mail: sent/);
    assertNoSecrets(runtime.logs.join('\n') + status.stdout);
  });

  it('serves HTTP on the port it was given (L2FLOW_HTTP_PORT=0: any free one) and prints its URL', async () => {
    runtime = startRuntime({ ...env, L2FLOW_HTTP_PORT: '0' });
    const rt = runtime;
    const url = await until('the URL line', async () => rt.logs.map((l) => /^l2flow: HTTP API on (http:\/\/127\.0\.0\.1:\d+)$/.exec(l)?.[1]).find(Boolean));
    // The log line goes through pino's asynchronous destination: it may land a moment after the printed URL.
    await until('the log line naming the URL', async () => rt.logs.some((l) => l.includes('HTTP API listening on') && l.includes(url)));
    expect(await (await fetch(`${url}/healthz`)).json()).toEqual({ ok: true });
    expect((await fetch(`${url}/readyz`)).status).toBe(200);
    const run = await fetch(`${url}/api/runs/${D}`);
    const text = await run.text();
    expect(JSON.parse(text)).toMatchObject({ logical_date: D, status: 'success' });
    assertNoSecrets(text);
  });
});
