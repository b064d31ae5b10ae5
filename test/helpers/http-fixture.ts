import pg from 'pg';
import { createL2flow, type L2flow } from '../../src/runtime/api.js';
import { createSegmentationView, createTestDb, type TestDb } from './db.js';
import { startSapServer, type TestSapServer } from './sap-server.js';
import { startSmtpServer, type TestSmtpServer } from './smtp.js';

/**
 * One warehouse database, SAP and SMTP servers, and a started createL2flow() whose HTTP server listens on a free
 * port of 127.0.0.1. Every connection holds a secret, and so does the API token; `bodies` collects every answer the
 * tests read, so a test can check that none of them shows a secret.
 */

export const D = '2024-06-10';
export const FLAG = 'l1_to_l2_load_successfull';
export const SECRETS = { warehouse: 'Http-Wh-Pa55-91c2', sap: 'Http-Sap-T0k-5b7e', smtp: 'Http-Smtp-Pa55-0d4a', token: 'http-api-secret-0123456789abcdef' };

export interface HttpFixture {
  db: TestDb;
  l2: L2flow;
  url: string;
  sap: TestSapServer;
  /** Every response body read through `call`. */
  bodies: string[];
  /** A request to the server; `token` adds the bearer token, `json` sends a JSON body. */
  call(method: string, path: string, o?: { json?: unknown; token?: string | false; headers?: Record<string, string> }): Promise<{ status: number; body: any; text: string }>;
  close(): Promise<void>;
}

/** Start the fixture; `token` is L2FLOW_API_TOKEN (default `ops:<secret>`; null for none); `sensors` is the config's. */
export async function startHttpFixture(o: { token?: string | null; sensors?: Record<string, Record<string, unknown>> } = {}): Promise<HttpFixture> {
  const db = await createTestDb();
  await createSegmentationView(db.pool, 3);
  const role = `l2flow_http_${db.name}`;
  await db.pool.query(`create role ${role} login superuser password '${SECRETS.warehouse}'`);
  const sap: TestSapServer = await startSapServer();
  const smtp: TestSmtpServer = await startSmtpServer({ user: 'mailer', password: SECRETS.smtp });
  const token = o.token === undefined ? `ops:${SECRETS.token}` : o.token;
  const l2 = createL2flow({
    config: {
      workflow: { startDate: D, claimIntervalSeconds: 0.2 },
      http: { port: 0 },
      connections: {
        dwh: db.uri.replace(/^postgres:\/\/[^@]*@/, `postgres://${role}:${SECRETS.warehouse}@`),
        sap_conn: `${sap.base}/sap/readiness?token=${SECRETS.sap}`,
        smtp_default: smtp.uri('mailer', SECRETS.smtp),
      },
      email: { recipients: ['dwh-team@bank.example'] },
      ...(o.sensors ? { sensors: o.sensors } : {}),
      children: {
        wf_data_preparation_for_reports: { kind: 'sql', statement: 'select $1::date' },
        l1_to_l2_p_load_data_ds_client_segmentation_full: { kind: 'sql', statement: 'select $1::date, $2::bigint' },
      },
    },
    env: token ? { L2FLOW_API_TOKEN: token } : {},
    logger: { level: 'silent' },
  });
  await l2.start();
  const url = l2.httpUrl!;
  const bodies: string[] = [];
  return {
    db,
    l2,
    url,
    sap,
    bodies,
    async call(method, path, c = {}) {
      const headers: Record<string, string> = { ...c.headers };
      if (c.json !== undefined) headers['content-type'] = 'application/json';
      if (c.token !== false && token) headers.authorization = `Bearer ${c.token ?? token.split(':').slice(1).join(':')}`;
      const res = await fetch(`${url}${path}`, { method, headers, body: c.json === undefined ? undefined : JSON.stringify(c.json) });
      const text = await res.text();
      bodies.push(text);
      let body: unknown = null;
      try {
        body = JSON.parse(text);
      } catch {
        body = null;
      }
      return { status: res.status, body, text };
    },
    async close() {
      await l2.stop();
      await sap.close();
      await smtp.close();
      await db.drop();
      // The role owned objects of the dropped database only: now it can go.
      const admin = new pg.Client({ connectionString: db.uri.replace(/\/[^/]*$/, '/postgres') });
      await admin.connect();
      await admin.query(`drop role if exists ${role}`).finally(() => admin.end());
    },
  };
}
