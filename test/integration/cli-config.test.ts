import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { runMain } from '../helpers/process.js';
import { writeChildrenConfig } from '../helpers/children-config.js';

// `l2flow config check` needs no database: these connections point nowhere and nothing connects.
const SECRET = 'S3cr3t-Pa55';
const TOKEN_SECRET = 'tok-0123456789abcdef';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'l2flow-config-check-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
const childrenFile = writeChildrenConfig(tmp);

const ENV: Record<string, string> = {
  L2FLOW_CONN_DWH: `postgres://etl:${SECRET}@127.0.0.1:9/dwh`,
  L2FLOW_CONN_DWH_LISTEN: `postgres://listener:${SECRET}@127.0.0.1:9/dwh`,
  L2FLOW_CONN_SAP_CONN: `https://sap.example/readiness?token=${SECRET}`,
  L2FLOW_CONN_SMTP_DEFAULT: `smtp://mail:${SECRET}@127.0.0.1:9`,
  EMAIL_RECIPIENTS: 'dwh-team@bank.example',
  L2FLOW_CONFIG: childrenFile,
  L2FLOW_HTTP_HOST: '0.0.0.0',
  L2FLOW_API_TOKEN: `ops:${TOKEN_SECRET}`,
  L2FLOW_POOL_SIZE: '7',
};

describe('l2flow config check', () => {
  it('prints the resolved configuration with every secret masked and its sources; exit 0', async () => {
    const r = await runMain(['config', 'check'], ENV);
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/^configuration ok/);
    expect(r.out).toContain(`file: ${childrenFile}`);
    expect(r.out).toContain('L2FLOW_POOL_SIZE (workflow.poolSize)');
    expect(r.out).toMatch(/^poolSize +7$/m);
    expect(r.out).toMatch(/^http\.host +0\.0\.0\.0$/m);
    expect(r.out).toMatch(/^connections\.dwh +postgres:\/\/etl:\*\*\*@127\.0\.0\.1:9\/dwh$/m);
    expect(r.out).toMatch(/^connections\.dwhListen +postgres:\/\/listener:\*\*\*@127\.0\.0\.1:9\/dwh$/m);
    expect(r.out).toMatch(/^http\.token\.secret +\*\*\*$/m);
    expect(r.out).toMatch(/^children\.wf_data_preparation_for_reports\.statement +select \$1::date$/m);
    expect(r.out).not.toContain(SECRET);
    expect(r.out).not.toContain(TOKEN_SECRET);
  });

  it('--json parses, holds the same values, and no secret', async () => {
    const r = await runMain(['config', 'check', '--json'], ENV);
    expect(r.code).toBe(0);
    const doc = JSON.parse(r.out) as { ok: boolean; sources: { file: string; environment: Record<string, string> }; config: Record<string, any> };
    expect(doc.ok).toBe(true);
    expect(doc.sources.file).toBe(childrenFile);
    expect(doc.sources.environment.L2FLOW_CONN_DWH).toBe('connection URI');
    expect(doc.config.poolSize).toBe(7);
    expect(doc.config.connections.sap).toBe('https://sap.example/readiness?token=***');
    expect(doc.config.http.token).toEqual({ name: 'ops', secret: '***' });
    expect(r.out).not.toContain(SECRET);
    expect(r.out).not.toContain(TOKEN_SECRET);
  });

  it("shows where l2flow's tables live: the warehouse, or the state connection (masked)", async () => {
    const one = await runMain(['config', 'check'], ENV);
    expect(one.out).toContain("l2flow's tables: in the warehouse (connection state is not set)");
    expect(one.out).toMatch(/^connections\.state +the warehouse \(dwh\)$/m);
    const env = { ...ENV, L2FLOW_CONN_STATE: `postgres://l2flow:${SECRET}@127.0.0.1:9/l2flow_state` };
    const two = await runMain(['config', 'check'], env);
    expect(two.code).toBe(0);
    expect(two.out).toContain("l2flow's tables: a database of their own, connection state (not the warehouse)");
    expect(two.out).toMatch(/^connections\.state +postgres:\/\/l2flow:\*\*\*@127\.0\.0\.1:9\/l2flow_state$/m);
    expect(two.out).not.toContain(SECRET);
    const json = JSON.parse((await runMain(['config', 'check', '--json'], env)).out) as { stateDatabase: string; config: { connections: { state: string } } };
    expect(json.stateDatabase).toBe('separate');
    expect(json.config.connections.state).toBe('postgres://l2flow:***@127.0.0.1:9/l2flow_state');
  });

  it('a bad value exits 2 naming the variable and what to write', async () => {
    const r = await runMain(['config', 'check'], { ...ENV, L2FLOW_HTTP_PORT: 'eighty' });
    expect(r.code).toBe(2);
    expect(r.out).toBe('');
    expect(r.err).toMatch(/configuration error: L2FLOW_HTTP_PORT: "eighty" is not a number: write e\.g\. L2FLOW_HTTP_PORT=8780/);
  });

  it('what `run` needs is checked too: missing recipients, a non-loopback server without a token, a bad URI', async () => {
    const { EMAIL_RECIPIENTS: _r, ...noRecipients } = ENV;
    const a = await runMain(['config', 'check'], noRecipients);
    expect([a.code, a.err]).toEqual([2, expect.stringMatching(/EMAIL_RECIPIENTS: no failure-mail recipients/)]);
    const { L2FLOW_API_TOKEN: _t, ...noToken } = ENV;
    const b = await runMain(['config', 'check'], noToken);
    expect([b.code, b.err]).toEqual([2, expect.stringMatching(/L2FLOW_API_TOKEN: the HTTP server binds 0\.0\.0\.0/)]);
    const c = await runMain(['config', 'check', '--json'], { ...ENV, L2FLOW_CONN_SAP_CONN: `ftp://sap:${SECRET}@x/` });
    expect(c.code).toBe(2);
    expect(c.err).toMatch(/L2FLOW_CONN_SAP_CONN/);
    expect(c.err).not.toContain(SECRET);
  });

  it('a file key that is wrong exits 2 naming the key and the file', async () => {
    const bad = path.join(tmp, 'bad.yaml');
    writeFileSync(bad, 'workflow:\n  maxActiveRuns: many\n');
    const r = await runMain(['config', 'check'], { ...ENV, L2FLOW_CONFIG: bad });
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/configuration error: workflow\.maxActiveRuns \(in bad\.yaml\)/);
  });

  it('usage: a missing or unknown subcommand, an unknown flag exit 2', async () => {
    for (const argv of [['config'], ['config', 'show'], ['config', 'check', '--yaml']]) {
      const r = await runMain(argv, ENV);
      expect(r.code, argv.join(' ')).toBe(2);
      expect(r.err).toMatch(/config/);
    }
  });
});
