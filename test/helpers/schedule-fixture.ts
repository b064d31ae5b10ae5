import { pino } from 'pino';
import { afterAll, afterEach, beforeAll } from 'vitest';
import { createApp, type App, type AppOptions } from '../../src/runtime/app.js';
import { loadConfig, type FileConfig } from '../../src/runtime/config.js';
import { createTestDb, type TestDb } from './db.js';
import { startSapServer, type TestSapServer } from './sap-server.js';
import { startSmtpServer, type TestSmtpServer } from './smtp.js';

/**
 * Apps with schedules against a database of their own per test. Runs the schedules create are executed too, by
 * children that do nothing; the tests look only at which runs exist, who created them and what was skipped.
 */

export const WF = 'WF_MAIN_DATASETS_LOAD_L2_TO_L2';
export const FLAG = 'l1_to_l2_load_successfull';

const CHILDREN = {
  wf_data_preparation_for_reports: { kind: 'sql', statement: 'select 1' },
  l1_to_l2_p_load_data_ds_client_segmentation_full: { kind: 'sql', statement: 'select 1' },
} as const;

export interface ScheduleFixture {
  /** A new migrated database for the current test, dropped after it. */
  fresh(): Promise<TestDb>;
  db(): TestDb;
  /** A built app on the current test's database (not started); stopped after the test. */
  app(file: FileConfig, opts?: AppOptions): App;
  /** Runs as (logical date, triggered_by), oldest first. */
  runs(): Promise<{ d: string; by: string }[]>;
  skipped(): Promise<{ d: string; reason: string }[]>;
}

/** Register the hooks of a schedule test file and return its helpers. */
export function useScheduleFixture(): ScheduleFixture {
  let db: TestDb | undefined;
  let sap: TestSapServer;
  let smtp: TestSmtpServer;
  const apps: App[] = [];
  beforeAll(async () => {
    sap = await startSapServer();
    smtp = await startSmtpServer();
  });
  afterEach(async () => {
    await Promise.all(apps.splice(0).map((a) => a.stop().catch(() => undefined)));
    await db?.drop();
    db = undefined;
  });
  afterAll(async () => {
    await sap.close();
    await smtp.close();
  });
  const current = () => {
    if (!db) throw new Error('call await fixture.fresh() first');
    return db;
  };
  return {
    async fresh() {
      db = await createTestDb();
      return db;
    },
    db: current,
    app(file, opts = {}) {
      const config = loadConfig(
        { L2FLOW_CONN_DWH: current().uri, L2FLOW_CONN_SAP_CONN: `${sap.base}/readiness`, L2FLOW_CONN_SMTP_DEFAULT: smtp.uri(), EMAIL_RECIPIENTS: 'team@bank.example' },
        { file: { ...file, children: CHILDREN } },
      );
      const app = createApp(config, pino({ level: process.env.L2FLOW_TEST_LOG ?? 'silent' }), { claimIntervalMs: 200, ...opts });
      apps.push(app);
      return app;
    },
    async runs() {
      const { rows } = await current().pool.query<{ d: string; by: string }>(
        `select to_char(logical_date, 'YYYY-MM-DD') as d, triggered_by as by from l2flow.run order by logical_date`,
      );
      return rows;
    },
    async skipped() {
      const { rows } = await current().pool.query<{ d: string; reason: string }>(
        `select to_char(logical_date, 'YYYY-MM-DD') as d, reason from l2flow.skipped_date order by logical_date`,
      );
      return rows;
    },
  };
}
