import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeChildrenConfig } from '../helpers/children-config.js';
import { createTestDb, type TestDb } from '../helpers/db.js';
import { ensureBuilt, runCli, startRuntime, until } from '../helpers/process.js';

/** L2FLOW_LOG_FORMAT on a real `l2flow run`: pretty lines for people, JSON lines for machines, secrets out of both. */

const DB_PASSWORD = 'logfmt-Db-Pa55word';
const SAP_TOKEN = 'logfmt-Sap-T0ken-xyz';

describe('L2FLOW_LOG_FORMAT', () => {
  let db: TestDb;
  let dir: string;
  let env: Record<string, string>;

  beforeAll(async () => {
    ensureBuilt();
    db = await createTestDb();
    await db.pool.query(`create role l2flow_lf_${db.name} login password '${DB_PASSWORD}' superuser`);
    dir = mkdtempSync(path.join(tmpdir(), 'l2flow-logfmt-'));
    env = {
      L2FLOW_CONN_DWH: db.uri.replace('postgres://root@', `postgres://l2flow_lf_${db.name}:${DB_PASSWORD}@`),
      L2FLOW_CONN_SAP_CONN: `http://127.0.0.1:1/sap/readiness?token=${SAP_TOKEN}`,
      L2FLOW_CONN_SMTP_DEFAULT: 'smtp://127.0.0.1:1',
      EMAIL_RECIPIENTS: 'dwh-team@bank.example',
      L2FLOW_CONFIG: writeChildrenConfig(dir),
      L2FLOW_LOG_LEVEL: 'debug',
    };
  });

  afterAll(async () => {
    await db?.pool.query(`drop role if exists l2flow_lf_${db.name}`).catch(() => undefined);
    await db?.drop();
    rmSync(dir, { recursive: true, force: true });
  });

  /** Start `l2flow run` with the format, wait until it runs, stop it; its stdout lines. */
  async function runWith(format: string): Promise<string[]> {
    const rt = startRuntime({ ...env, L2FLOW_LOG_FORMAT: format });
    try {
      await until('l2flow running', async () => rt.logs.some((l) => l.includes('l2flow running')), 30_000, 100);
    } finally {
      expect(await rt.stop()).toBe(0);
    }
    return rt.logs;
  }

  it('pretty: time, level and message lines that are not JSON, with no password or token', async () => {
    const logs = await runWith('pretty');
    const logLines = logs.filter((l) => /^\[\d{2}:\d{2}:\d{2}\.\d{3}\] (INFO|DEBUG|WARN)/.test(l));
    expect(logLines.length).toBeGreaterThan(3);
    expect(logLines.some((l) => /INFO: l2flow running; waiting for runs/.test(l))).toBe(true);
    for (const l of logs) expect(() => JSON.parse(l), l).toThrow();
    for (const secret of [DB_PASSWORD, SAP_TOKEN]) expect(logs.join('\n')).not.toContain(secret);
  }, 60_000);

  it('json: every log line is a JSON object', async () => {
    const logs = await runWith('json');
    const objects = logs.filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as { msg?: string });
    expect(objects.some((o) => o.msg === 'l2flow running; waiting for runs')).toBe(true);
    // The only other stdout line is the CLI's own note of the HTTP address.
    expect(logs.filter((l) => !l.startsWith('{'))).toEqual([expect.stringMatching(/^l2flow: HTTP API on http:/)]);
    for (const secret of [DB_PASSWORD, SAP_TOKEN]) expect(logs.join('\n')).not.toContain(secret);
  }, 60_000);

  it('anything else: exit 2 naming the variable and its values', async () => {
    const r = await runCli(['run'], { ...env, L2FLOW_LOG_FORMAT: 'xml' });
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('L2FLOW_LOG_FORMAT');
    expect(r.stderr).toMatch(/must be pretty or json/);
  });
});
