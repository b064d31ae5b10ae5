import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, expect } from 'vitest';
import { createApp, type App, type AppOptions } from '../../src/runtime/app.js';
import { connectionUris, loadConfig } from '../../src/runtime/config.js';
import { createLogger, secretsOf } from '../../src/runtime/logger.js';
import { addDays } from '../../src/lib/dates.js';
import { createSegmentationView, createTestDb, type TestDb } from './db.js';
import { runMain, until } from './process.js';
import { startSapServer, type SapHandler, type SapRequest, type TestSapServer } from './sap-server.js';
import { startSmtpServer, type ReceivedMail, type TestSmtpServer } from './smtp.js';

/**
 * The whole runtime in-process (createApp with every real service) against a real warehouse database, a real SAP
 * HTTP server and a real SMTP server on 127.0.0.1, with a secret in each of the three connections. Everything an
 * operator could see — log lines, run and step errors, `l2flow status` output, failure mails, the outbox and the
 * SAP send record — is collected so a test can check that no secret ever shows up in it.
 */

export const WF = 'WF_MAIN_DATASETS_LOAD_L2_TO_L2';
export const FLAG = 'l1_to_l2_load_successfull';

/** One secret per connection. The local server trusts every login, so the warehouse password is checked by nobody. */
export const SECRETS = {
  warehouse: 'Wh-Pa55w0rd-7d1e',
  sap: 'Sap-T0ken-c4f2a9',
  smtp: 'Smtp-Pa55-e8b3',
} as const;
export const SMTP_USER = 'mailer';
export const RECIPIENTS = ['dwh-team@bank.example', 'oncall@bank.example'];

/** The subset of the L2FLOW_CONFIG file the tests vary; merged over the defaults key by key. */
export interface FileOverrides {
  children?: Record<string, Record<string, unknown>>;
  sap?: Record<string, number>;
  sensors?: Record<string, Record<string, unknown>>;
  workflow?: Record<string, unknown>;
  pools?: Record<string, { slots: number }>;
  completionFlag?: Record<string, unknown>;
}

export interface RunView {
  status: string;
  current_step: string | null;
  load_id: string | null;
  /** l2flow.runs.error: the message operators query. */
  error: string | null;
  /** l2flow.run.error: code, message and details. */
  error_info: { code: string; message: string; details?: Record<string, unknown> } | null;
  started_at: Date | null;
  finished_at: Date | null;
  run_id: string;
}

export interface CliOutput {
  code: number;
  out: string;
  err: string;
}

export interface Fixture {
  db: TestDb;
  /** The warehouse URI the runtime and the CLI use: a superuser role with a password. */
  dwhUri: string;
  sapUri: string;
  sap: TestSapServer;
  smtp: TestSmtpServer;
  /** Every log line of every app of the file. */
  lines: string[];
  /** Errors that escaped to the process (unhandled rejections, uncaught exceptions). */
  escaped: unknown[];
  /** `env` adds environment variables (they win over the file, as in production). */
  startApp(date: string, o?: { file?: FileOverrides; sapUri?: string; app?: AppOptions; env?: Record<string, string> }): Promise<App>;
  /** `l2flow trigger --date D`; with `flag`, the flag row for D − 1 is inserted first. */
  trigger(date: string, o?: { flag?: boolean }): Promise<void>;
  insertFlag(businessDate: string, flagCode?: string): Promise<void>;
  run(date: string): Promise<RunView | undefined>;
  /** Wait for the run of `date` to end (success or failed). */
  finished(date: string, timeoutMs?: number): Promise<RunView>;
  /** `l2flow status --date D [--json]` in this process, configured only by the environment, like an operator's shell. */
  status(date?: string, json?: boolean): Promise<CliOutput>;
  /** SAP requests of the run of `date` (by Idempotency-Key). */
  sapRequests(date: string): SapRequest[];
  /** A SAP handler with its own request counter, starting at 1 for this test. */
  answer(h: SapHandler): void;
  /** Failure mails received for `date`. */
  mails(date: string): ReceivedMail[];
  /** Fail when any secret appears in anything collected so far (logs, run rows, status output, mails, …). */
  assertNoSecrets(): Promise<void>;
  /** Between tests: stop apps, end runs left unfinished, drop undelivered mail, reset the servers. */
  reset(): Promise<void>;
  close(): Promise<void>;
}


/** The forms a secret can take in text: as is, percent-encoded, base64 (Basic auth, AUTH PLAIN). */
function forms(secret: string): string[] {
  const b64 = (s: string) => Buffer.from(s, 'utf8').toString('base64');
  return [...new Set([secret, encodeURIComponent(secret), b64(secret), b64(`${SMTP_USER}:${secret}`), b64(`\0${SMTP_USER}\0${secret}`)])];
}

function merge(base: Record<string, unknown>, over: Record<string, unknown> | undefined): Record<string, unknown> {
  const out: Record<string, unknown> = { ...base };
  for (const [k, v] of Object.entries(over ?? {})) {
    const b = out[k];
    out[k] = v && typeof v === 'object' && !Array.isArray(v) && b && typeof b === 'object' ? merge(b as Record<string, unknown>, v as Record<string, unknown>) : v;
  }
  return out;
}

export async function createFixture(): Promise<Fixture> {
  const db = await createTestDb();
  await createSegmentationView(db.pool, 5);
  const role = `l2flow_rf_${db.name}`;
  await db.pool.query(`create role ${role} login superuser password '${SECRETS.warehouse}'`);
  const dwhUri = db.uri.replace(/^postgres:\/\/[^@]*@/, `postgres://${role}:${SECRETS.warehouse}@`);
  const sap = await startSapServer();
  const sapUri = `${sap.base}/sap/readiness?token=${SECRETS.sap}`;
  const smtp = await startSmtpServer({ user: SMTP_USER, password: SECRETS.smtp });
  const dir = mkdtempSync(path.join(tmpdir(), 'l2flow-rf-'));
  const lines: string[] = [];
  const printed: string[] = [];
  const escaped: unknown[] = [];
  const apps: App[] = [];
  let files = 0;

  const onEscape = (err: unknown) => void escaped.push(err);
  process.on('unhandledRejection', onEscape);
  process.on('uncaughtException', onEscape);

  const defaults = {
    children: {
      wf_data_preparation_for_reports: { kind: 'sql', statement: 'select $1::date' },
      l1_to_l2_p_load_data_ds_client_segmentation_full: { kind: 'sql', statement: 'select $1::date, $2::bigint' },
    },
    // Small SAP timeouts and backoff; Retry-After is honoured up to retryMaxDelayMs.
    sap: { timeoutSeconds: 1, connectTimeoutSeconds: 1, retryBaseDelayMs: 20, retryMaxDelayMs: 2000, maxTries: 3 },
    // The Airflow poke interval: any flag seen within seconds was seen through NOTIFY (or at the step's start).
    sensors: { wait_for_l2_full_load: { pokeIntervalSeconds: 60 } },
  };

  async function cli(argv: string[]): Promise<CliOutput> {
    const r = await runMain(argv, { L2FLOW_CONN_DWH: dwhUri });
    printed.push(r.out, r.err);
    return r;
  }


  async function run(date: string): Promise<RunView | undefined> {
    const { rows } = await db.pool.query<RunView>(
      `select v.status, v.current_step, v.load_id::text, v.error, r.error as error_info, v.started_at, v.finished_at, v.run_id
         from l2flow.runs v join l2flow.run r using (run_id) where v.workflow_id = $1 and v.logical_date = $2`,
      [WF, date],
    );
    return rows[0];
  }

  const fx: Fixture = {
    db,
    dwhUri,
    sapUri,
    sap,
    smtp,
    lines,
    escaped,
    async startApp(date, o = {}) {
      const file = path.join(dir, `l2flow-${++files}.json`);
      writeFileSync(file, JSON.stringify(merge(defaults, o.file as Record<string, unknown> | undefined)));
      const config = loadConfig({
        L2FLOW_CONN_DWH: dwhUri,
        L2FLOW_CONN_SAP_CONN: o.sapUri ?? sapUri,
        L2FLOW_CONN_SMTP_DEFAULT: smtp.uri(SMTP_USER, SECRETS.smtp),
        EMAIL_RECIPIENTS: RECIPIENTS.join(','),
        // The run's own date is the first one: wait_for_success_end passes at once.
        L2FLOW_START_DATE: date,
        L2FLOW_CONFIG: file,
        ...o.env,
      });
      const logger = createLogger({
        level: 'debug',
        secrets: secretsOf(connectionUris(config)),
        destination: { write: (s: string) => void lines.push(s) },
      });
      const app = createApp(config, logger, { claimIntervalMs: 200, mailPollIntervalMs: 100, mailRetryBaseDelayMs: 50, ...o.app });
      apps.push(app);
      await app.start();
      return app;
    },
    async trigger(date, o = {}) {
      if (o.flag) await fx.insertFlag(addDays(date, -1));
      const r = await cli(['trigger', '--date', date]);
      expect(r, r.err).toMatchObject({ code: 0 });
    },
    async insertFlag(businessDate, flagCode = FLAG) {
      await db.pool.query('insert into md.dwh_flag (flag_cd, bussines_date) values ($1, $2)', [flagCode, businessDate]);
    },
    run,
    finished(date, timeoutMs = 15_000) {
      return until(`the run of ${date} to end`, async () => {
        const r = await run(date);
        return r && (r.status === 'success' || r.status === 'failed') ? r : null;
      }, timeoutMs);
    },
    status(date, json = false) {
      return cli(['status', ...(date ? ['--date', date] : []), ...(json ? ['--json'] : [])]);
    },
    sapRequests: (date) => sap.requests.filter((r) => String(r.headers['idempotency-key']).startsWith(`${WF}:${date}:`)),
    answer(h) {
      let n = 0;
      sap.setHandler((res, _global, req) => h(res, ++n, req));
    },
    mails: (date) => smtp.messages.filter((m) => m.subject.includes(` ${date}: `)),
    async assertNoSecrets() {
      // The status commands operators run, over every run of the file.
      for (const json of [false, true]) await fx.status(undefined, json);
      const dates = (await db.pool.query<{ d: string }>(`select logical_date::text as d from l2flow.run`)).rows.map((r) => r.d);
      for (const d of dates) for (const json of [false, true]) await fx.status(d, json);
      const table = async (sql: string) => JSON.stringify((await db.pool.query(sql)).rows);
      const sources: Array<[string, string]> = [
        ['log lines', lines.join('')],
        ['l2flow.runs (error)', await table('select * from l2flow.runs')],
        ['l2flow.run (error, snapshot)', await table('select * from l2flow.run')],
        ['l2flow.step (errors)', await table('select * from l2flow.step')],
        ['l2flow.email_outbox', await table('select * from l2flow.email_outbox')],
        ['l2flow.sap_send', await table('select * from l2flow.sap_send')],
        ['status output', printed.join('\n')],
        ['failure mails', smtp.messages.map((m) => `${m.subject}\n${m.text}\n${m.html}`).join('\n')],
      ];
      for (const [where, text] of sources) {
        for (const [name, secret] of Object.entries(SECRETS)) {
          for (const form of forms(secret)) expect(text.includes(form), `the ${name} secret (${form}) appears in ${where}`).toBe(false);
        }
      }
      expect(escaped, 'errors escaped to the process').toEqual([]);
    },
    async reset() {
      await Promise.all(apps.splice(0).map((a) => a.stop()));
      await db.pool.query(`update l2flow.run set status = 'cancelled' where status in ('queued', 'running')`);
      await db.pool.query(`update l2flow.email_outbox set status = 'dead' where status = 'pending'`);
      sap.setHandler((res) => res.writeHead(200, { 'content-type': 'application/json' }).end('{"ok":true}'));
      smtp.set({ user: SMTP_USER, password: SECRETS.smtp, rejectRecipients: false, acceptDelayMs: 0 });
      await smtp.restart();
    },
    async close() {
      await Promise.all(apps.splice(0).map((a) => a.stop().catch(() => undefined)));
      process.off('unhandledRejection', onEscape);
      process.off('uncaughtException', onEscape);
      await sap.close();
      await smtp.close();
      await db.drop();
      // The role is cluster-wide: drop it once its database (and every session of it) is gone.
      const admin = new pg.Client({ connectionString: db.uri.replace(/\/[^/]*$/, '/postgres') });
      await admin.connect();
      try {
        await admin.query(`drop role if exists ${role}`);
      } finally {
        await admin.end();
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
  return fx;
}

/**
 * One fixture for a whole test file: created before the first test, reset and checked for leaked secrets after
 * each test, checked once more and closed at the end. `set` receives it once it exists.
 */
export function useFixture(set: (fx: Fixture) => void): void {
  let fx: Fixture | undefined;
  beforeAll(async () => {
    fx = await createFixture();
    set(fx);
  });
  afterEach(async () => {
    await fx!.reset();
    await fx!.assertNoSecrets();
  });
  afterAll(async () => {
    try {
      await fx?.assertNoSecrets();
    } finally {
      await fx?.close();
    }
  });
}
