/**
 * The real thing: the whole l2flow runtime (createApp) executing one run per sample. A sample queues the run
 * of logical date D = business date + 1, waits until its actor is parked in wait_for_l2_full_load, and is
 * "seen" when the supervisor reports the run in any step but that one. Every run must then finish `success`.
 */
import http from 'node:http';
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { AddressInfo } from 'node:net';
import { performance } from 'node:perf_hooks';
import type pg from 'pg';
import { pino } from 'pino';
import { filter } from 'rxjs';
import { createApp } from '../src/runtime/app.js';
import { loadConfig, type Config } from '../src/runtime/config.js';
import { createLogger } from '../src/runtime/logger.js';
import { createRun, getRunByDate } from '../src/runtime/run-store.js';
import type { RunEvent } from '../src/runtime/supervisor.js';
import { addDays } from '../src/lib/dates.js';
import { FLAG, noteFlagChecks, noteFlagNotifications, within, type Observer } from './observers.js';

const SENSOR_STEP = 'wait_for_l2_full_load';
const VIEW = 'wk_export.ds_client_segmentation_last_v';

/** A stand-in SAP: answers every POST with 200. */
export async function startSap(): Promise<{ url: string; requests: () => number; close(): Promise<void> }> {
  let requests = 0;
  const server = http.createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      requests += 1;
      res.writeHead(200, { 'content-type': 'application/json' }).end('{"ok":true}');
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/sap/readiness`,
    requests: () => requests,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/** The view send_flg_to_sap counts (the same SQL as the tests' createSegmentationView). */
export async function createSegmentationView(pool: pg.Pool, rows: number): Promise<void> {
  await pool.query(`create schema if not exists wk_export;
    create table if not exists wk_export.ds_client_segmentation (client_id bigint, segment text);
    create or replace view ${VIEW} as select * from wk_export.ds_client_segmentation;`);
  await pool.query(`insert into wk_export.ds_client_segmentation select g, 'seg' || (g % 3) from generate_series(1, $1::int) g`, [rows]);
}

/**
 * The runtime's configuration, read by loadConfig exactly as `l2flow run` reads it (explicit env + a JSON
 * L2FLOW_CONFIG file): production defaults, except the bench database and SAP, a 60 s flag poke (so only
 * NOTIFY can be fast), 1 h sensor timeouts, and children that only `select 1`.
 */
export function benchConfig(dwh: string, sap: string, startDate: string, logLevel: string): Config {
  const dir = mkdtempSync(path.join(tmpdir(), 'l2flow-bench-'));
  const file = path.join(dir, 'l2flow.json');
  try {
    writeFileSync(
      file,
      JSON.stringify({
        workflow: { startDate },
        sensors: {
          wait_for_l2_full_load: { flagTable: 'md.dwh_flag', flagCode: FLAG, pokeIntervalSeconds: 60, timeoutSeconds: 3600 },
          wait_for_success_end: { timeoutSeconds: 3600 },
        },
        children: {
          wf_data_preparation_for_reports: { kind: 'sql', statement: 'select 1' },
          l1_to_l2_p_load_data_ds_client_segmentation_full: { kind: 'sql', statement: 'select 1' },
        },
        sap: { viewName: VIEW },
        logLevel,
      }),
    );
    return loadConfig({
      L2FLOW_CONFIG: file,
      L2FLOW_CONN_DWH: dwh,
      L2FLOW_CONN_SAP_CONN: sap,
      L2FLOW_CONN_SMTP_DEFAULT: 'smtp://127.0.0.1:1', // only used when a run fails
      EMAIL_RECIPIENTS: 'dwh-team@bank.example',
    });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

export interface RunObserver extends Observer {
  /** Runs that finished `success`, and POSTs SAP received. */
  counts(): { succeeded: number; sapRequests: number };
}

/**
 * `firstDate` is the first sample's business date; the workflow's start date is that run's logical date, so
 * run 1 skips wait_for_success_end and run i waits for (already successful) run i − 1, as in production.
 */
export async function runObserver(o: { uri: string; firstDate: string; logLevel: string; logFile: string }): Promise<RunObserver> {
  const sap = await startSap();
  const config = benchConfig(o.uri, sap.url, addDays(o.firstDate, 1), o.logLevel);
  const logger = createLogger({ level: o.logLevel, destination: pino.destination({ dest: o.logFile, sync: false }) });
  const app = createApp(config, logger);
  const checks = noteFlagChecks(app.pool);
  const checksSub = app.sensorChecks$.subscribe(checks.onCheck);
  await createSegmentationView(app.pool, 7);
  await app.start();
  const notified = noteFlagNotifications(app.hub.notifications$);
  let succeeded = 0;

  return {
    name: 'l2flow run',
    firstDate: o.firstDate,
    counts: () => ({ succeeded, sapRequests: sap.requests() }),
    async arm(businessDate) {
      const logicalDate = addDays(businessDate, 1);
      let parked = false;
      let onParked!: () => void;
      let onSeen!: (t: number) => void;
      let onEnd!: (e: RunEvent) => void;
      const parkedP = new Promise<void>((r) => (onParked = r));
      const seen = new Promise<number>((r) => (onSeen = r));
      const ended = new Promise<RunEvent>((r) => (onEnd = r));
      // Subscribed before the run exists: events$ is synchronous with the actor's transitions.
      const sub = app.supervisor.events$.pipe(filter((e) => e.logicalDate === logicalDate)).subscribe((e) => {
        const t = performance.now();
        if (!parked && e.steps.length === 1 && e.steps[0] === SENSOR_STEP) {
          parked = true;
          onParked();
        } else if (parked && !e.steps.includes(SENSOR_STEP)) {
          onSeen(t); // only the first call counts
        }
        if (e.type === 'finished' || e.type === 'released') {
          sub.unsubscribe();
          onEnd(e);
        }
      });
      const { created } = await createRun(app.pool, { workflowId: config.workflowId, logicalDate, businessDate, triggeredBy: 'manual' });
      if (!created) throw new Error(`benchmark: a run for ${logicalDate} already exists in the bench database`);
      // Parked = the actor is in the sensor state, its first check was answered, and the pool is idle
      // (the snapshot write of the claim is done): the state a run is in for hours before the flag comes.
      await within(
        Promise.race([parkedP, ended.then((e) => Promise.reject(new Error(`run ${logicalDate} ended ${e.status} before parking`)))]),
        10_000,
        `run ${logicalDate} parking in ${SENSOR_STEP}`,
      );
      await checks.quiet(businessDate, 10_000);
      return {
        seen,
        marks: () => {
          const check = checks.lastCheck(businessDate);
          return { notified: notified.at.get(businessDate), checkSent: check?.sent, checked: check?.done };
        },
        done: async () => {
          const e = await within(ended, 30_000, `run ${logicalDate} finishing`);
          notified.at.delete(businessDate);
          checks.forget(businessDate);
          if (e.status !== 'success') {
            const row = await getRunByDate(app.pool, config.workflowId, logicalDate);
            throw new Error(`benchmark: run ${logicalDate} ended ${row?.status ?? e.status}: ${row?.error?.message ?? e.type}`);
          }
          succeeded += 1;
        },
      };
    },
    async close() {
      notified.stop();
      checksSub.unsubscribe();
      checks.stop();
      await app.stop();
      await sap.close();
      logger.flush();
    },
  };
}
