import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createSegmentationView, createTestDb, type TestDb } from '../helpers/db.js';
import { ensureBuilt, runCli, startRuntime, until } from '../helpers/process.js';
import { startSapServer, type TestSapServer } from '../helpers/sap-server.js';
import { startSmtpServer, type TestSmtpServer } from '../helpers/smtp.js';

// `l2flow run --inspect`: the relay runs in the process; nobody connecting costs nothing, a viewer sees the runs,
// and SIGTERM ends the process promptly either way. `ws` comes with @statelyai/inspect (its relay is built on it).
interface WsClient {
  on(event: 'open', cb: () => void): void;
  on(event: 'message', cb: (data: Buffer) => void): void;
  on(event: 'close' | 'error', cb: () => void): void;
  terminate(): void;
}
const WebSocket = createRequire(import.meta.url)('ws') as new (url: string) => WsClient;

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer().listen(0, () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
    s.on('error', reject);
  });
}

describe('l2flow run --inspect', () => {
  let db: TestDb;
  let sap: TestSapServer;
  let smtp: TestSmtpServer;
  let env: Record<string, string>;
  let dir: string;

  beforeAll(async () => {
    ensureBuilt();
    db = await createTestDb();
    await createSegmentationView(db.pool, 3);
    sap = await startSapServer();
    smtp = await startSmtpServer({});
    dir = mkdtempSync(path.join(tmpdir(), 'l2flow-inspect-'));
    const configFile = path.join(dir, 'l2flow.yaml');
    writeFileSync(
      configFile,
      `workflow:
  startDate: "2024-03-01"
children:
  wf_data_preparation_for_reports: { kind: sql, statement: "select $1::date, $2::bigint" }
  l1_to_l2_p_load_data_ds_client_segmentation_full: { kind: sql, statement: "select $1::date, $2::bigint" }
`,
    );
    env = {
      L2FLOW_CONN_DWH: db.uri,
      L2FLOW_CONN_SAP_CONN: `${sap.base}/sap/readiness?token=t`,
      L2FLOW_CONN_SMTP_DEFAULT: smtp.uri(),
      EMAIL_RECIPIENTS: 'dwh-team@bank.example',
      L2FLOW_CONFIG: configFile,
      L2FLOW_LOG_LEVEL: 'info',
    };
    expect((await runCli(['migrate'], env)).code).toBe(0);
  });

  afterAll(async () => {
    await sap?.close();
    await smtp?.close();
    await db?.drop();
    rmSync(dir, { recursive: true, force: true });
  });

  /** Queue `date` with its upstream flag already there, and wait for the run's success. */
  async function runDate(date: string, businessDate: string) {
    await db.pool.query(`insert into md.dwh_flag (flag_cd, bussines_date) values ('l1_to_l2_load_successfull', $1)`, [businessDate]);
    expect((await runCli(['trigger', '--date', date], env)).code).toBe(0);
    return until(
      `the run of ${date} to succeed`,
      async () => (await db.pool.query(`select status from l2flow.run where logical_date = $1 and status = 'success'`, [date])).rows[0],
      30_000,
    );
  }

  async function stopWithin(runtime: ReturnType<typeof startRuntime>, ms: number) {
    const t0 = Date.now();
    const code = await Promise.race([runtime.stop(), new Promise((r) => setTimeout(() => r('still running'), ms))]);
    if (code === 'still running') runtime.child.kill('SIGKILL');
    expect(code).toBe(0);
    return Date.now() - t0;
  }

  it('with nobody connecting: runs a date to success, one inspector log line, SIGTERM exits 0 promptly', async () => {
    const port = await freePort();
    const runtime = startRuntime(env, ['--inspect', '--inspect-port', String(port)]);
    await until('the inspector URL in the log', async () => runtime.logs.some((l) => l.includes(`http://localhost:${port}`)));
    await runDate('2024-03-01', '2024-02-29');
    // Longer than the inspector's 5 s reconnect period: a refused connection would show as repeated lines.
    await new Promise((r) => setTimeout(r, 6_000));
    const inspectorLines = [...runtime.logs, ...runtime.stderr].filter((l) => /inspect|websocket|ECONNREFUSED/i.test(l));
    expect(inspectorLines).toHaveLength(1);
    expect(await stopWithin(runtime, 10_000)).toBeLessThan(10_000);
  }, 60_000);

  it('a viewer connected to the relay receives the run actor; SIGTERM still exits 0 with the viewer connected', async () => {
    const port = await freePort();
    const runtime = startRuntime(env, ['--inspect', `--inspect-port=${port}`]);
    await until('the inspector URL in the log', async () => runtime.logs.some((l) => l.includes(`http://localhost:${port}`)));
    const viewer = new WebSocket(`ws://127.0.0.1:${port}`);
    const messages: { type?: string; snapshot?: { context?: { logicalDate?: string } } }[] = [];
    viewer.on('message', (data) => messages.push(JSON.parse(data.toString())));
    let closed = false;
    viewer.on('close', () => (closed = true));
    await new Promise<void>((resolve, reject) => {
      viewer.on('open', resolve);
      viewer.on('error', reject);
    });
    try {
      await runDate('2024-03-02', '2024-03-01');
      const ofRun = await until('an actor and a snapshot of the run', async () => {
        const own = messages.filter((m) => m.snapshot?.context?.logicalDate === '2024-03-02');
        return own.some((m) => m.type === '@xstate.actor') && own.some((m) => m.type === '@xstate.snapshot') ? own : null;
      });
      expect(ofRun.length).toBeGreaterThan(2);
      expect(await stopWithin(runtime, 10_000)).toBeLessThan(10_000);
      await until('the relay to drop the viewer', async () => closed, 2_000);
    } finally {
      viewer.terminate();
    }
  }, 60_000);
});
