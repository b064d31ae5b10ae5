import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { addDays } from '../../src/lib/dates.js';
import { createSegmentationView, createTestDb, type TestDb } from '../helpers/db.js';
import { ensureBuilt, runCli, startRuntime, until, type Runtime } from '../helpers/process.js';
import { startSapServer, type TestSapServer } from '../helpers/sap-server.js';
import { startSmtpServer, type TestSmtpServer } from '../helpers/smtp.js';

// Redaction through the real `l2flow run`: the process builds its own logger from its own configuration (no test
// copy of that wiring). Every connection carries a secret, SAP echoes its credentials into the error body, the run
// fails and mails; the secrets must be in none of what an operator can see.

const D = '2024-12-02';
const SECRETS = { warehouse: 'Wh-E2e-Pa55-91c3', sap: 'Sap-E2e-T0ken-5b7d', smtp: 'Smtp-E2e-Pa55-a0f4' } as const;
const SMTP_USER = 'mailer';

/** The forms a secret can take in text: as is, percent-encoded, base64 (Bearer/Basic, AUTH PLAIN/LOGIN). */
function forms(secret: string): string[] {
  const b64 = (s: string) => Buffer.from(s, 'utf8').toString('base64');
  return [...new Set([secret, encodeURIComponent(secret), b64(secret), b64(`${SMTP_USER}:${secret}`), b64(`\0${SMTP_USER}\0${secret}`)])];
}

describe('redaction in the real `l2flow run` process', () => {
  let db: TestDb;
  let sap: TestSapServer;
  let smtp: TestSmtpServer;
  let dir: string;
  let runtime: Runtime | undefined;

  beforeAll(async () => {
    ensureBuilt();
    db = await createTestDb();
    await createSegmentationView(db.pool, 4);
    // SAP refuses the request and quotes back everything it got, credentials included.
    sap = await startSapServer((res, _n, req) =>
      res.writeHead(400, { 'content-type': 'application/json' })
        .end(JSON.stringify({ error: 'ECHO-MARK rejected', authorization: req.headers.authorization, url: req.url })));
    smtp = await startSmtpServer({ user: SMTP_USER, password: SECRETS.smtp });
    dir = mkdtempSync(path.join(tmpdir(), 'l2flow-redact-'));
  }, 180_000);

  afterAll(async () => {
    await runtime?.stop('SIGKILL');
    await sap?.close();
    await smtp?.close();
    await db?.drop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('a SAP 400 echoing the token: no secret in stdout, stderr, the run rows, `l2flow status` or the mail', async () => {
    const config = path.join(dir, 'l2flow.json');
    writeFileSync(config, JSON.stringify({
      children: {
        wf_data_preparation_for_reports: { kind: 'sql', statement: 'select $1::date' },
        l1_to_l2_p_load_data_ds_client_segmentation_full: { kind: 'sql', statement: 'select $1::date, $2::bigint' },
      },
      sap: { retryBaseDelayMs: 20, maxTries: 2 },
    }));
    const env: Record<string, string> = {
      // Trust auth: the server accepts and ignores the password, which the process still holds and must not print.
      L2FLOW_CONN_DWH: db.uri.replace(/^postgres:\/\/root@/, `postgres://root:${SECRETS.warehouse}@`),
      L2FLOW_CONN_SAP_CONN: `${sap.base}/sap/readiness?token=${SECRETS.sap}`,
      L2FLOW_CONN_SMTP_DEFAULT: smtp.uri(SMTP_USER, SECRETS.smtp),
      EMAIL_RECIPIENTS: 'dwh-team@bank.example',
      L2FLOW_CONFIG: config,
      L2FLOW_START_DATE: D,
      L2FLOW_LOG_LEVEL: 'debug',
      L2FLOW_CLAIM_INTERVAL_SECONDS: '1',
    };
    expect(env.L2FLOW_CONN_DWH).toContain(SECRETS.warehouse);
    const printed: string[] = [];
    const cli = async (args: string[]) => {
      const r = await runCli(args, env);
      printed.push(r.stdout, r.stderr);
      expect(r.code, r.stderr).toBe(0);
      return r.stdout;
    };

    runtime = startRuntime(env);
    const rt = runtime;
    await until('the runtime to wait for runs', async () => rt.logs.some((l) => l.includes('l2flow running; waiting for runs')));
    await db.pool.query(`insert into md.dwh_flag (flag_cd, bussines_date) values ('l1_to_l2_load_successfull', $1)`, [addDays(D, -1)]);
    await cli(['trigger', '--date', D]);
    await until('the run to fail', async () =>
      (await db.pool.query(`select 1 from l2flow.run where logical_date = $1 and status = 'failed'`, [D])).rowCount);
    await smtp.waitForMessages(1, 15_000);
    await until('the outbox to record the mail as sent', async () =>
      (await db.pool.query(`select 1 from l2flow.email_outbox where status = 'sent'`)).rowCount);
    for (const args of [['status'], ['status', '--json'], ['status', '--date', D], ['status', '--date', D, '--json']]) await cli(args);
    expect(await rt.stop('SIGTERM')).toBe(0);

    // The secrets were in play: SAP got the token (as Bearer), the SMTP server the login, and SAP's echo of them
    // made it into the run's error, so only redaction keeps them out.
    expect(sap.requests.length).toBeGreaterThanOrEqual(1);
    expect(sap.requests[0]!.headers.authorization).toBe(`Bearer ${SECRETS.sap}`);
    expect(smtp.authAttempts).toContainEqual({ username: SMTP_USER, ok: true });
    const run = (await db.pool.query(`select error from l2flow.run where logical_date = $1`, [D])).rows[0];
    expect(run.error.code).toBe('SAP_HTTP_ERROR');
    expect(run.error.message).toContain('ECHO-MARK rejected');
    expect(smtp.messages[0]!.text).toContain('ECHO-MARK rejected');
    expect(rt.logs.join('\n')).toContain('ECHO-MARK rejected');

    const table = async (sql: string) => JSON.stringify((await db.pool.query(sql)).rows);
    const sources: Array<[string, string]> = [
      ['the process stdout (log lines)', rt.logs.join('\n')],
      ['the process stderr', rt.stderr.join('')],
      ['l2flow.runs', await table('select * from l2flow.runs')],
      ['l2flow.run', await table('select * from l2flow.run')],
      ['l2flow.step', await table('select * from l2flow.step')],
      ['l2flow.sap_send', await table('select * from l2flow.sap_send')],
      ['l2flow.email_outbox', await table('select * from l2flow.email_outbox')],
      ['`l2flow status` output', printed.join('\n')],
      ['the failure mail', smtp.messages.map((m) => `${m.subject}\n${m.text}\n${m.html}`).join('\n')],
    ];
    for (const [where, text] of sources) {
      for (const [name, secret] of Object.entries(SECRETS)) {
        for (const form of forms(secret)) expect(text.includes(form), `the ${name} secret (${form}) appears in ${where}`).toBe(false);
      }
    }
  }, 90_000);
});
