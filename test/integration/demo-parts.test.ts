import { describe, expect, it } from 'vitest';
import { loadConfig, configuredBy } from '../../src/runtime/config.js';
import { createLogger } from '../../src/runtime/logger.js';
import { createMailer } from '../../src/services/mail/index.js';
import { DEMO_CONFIG_FILE } from '../../src/runtime/demo/paths.js';
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
