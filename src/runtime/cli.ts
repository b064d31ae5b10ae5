import { toErrorInfo } from '../lib/errors.js';
import { createL2flow, L2flowError, type L2flow, type L2flowOptions } from './api.js';
import { parseFlags, UsageError } from './args.js';
import { cmdBackfill, parseBackfillFlags } from './cli-backfill.js';
import { parseDate, processIo, type Out } from './cli-io.js';
import { cmdStatus, parseStatusFlags } from './cli-status.js';
import { cmdClear, cmdMark, CLEAR_USAGE } from './cli-clear.js';
import { cmdDiagram, DIAGRAM_USAGE } from './cli-diagram.js';
import { cmdConfig, CONFIG_USAGE } from './cli-config.js';
import { ConfigError, configuredBy } from './config.js';
import { cmdDemo, DEMO_USAGE } from './demo/index.js';
import { RUN_FLAGS, runInspect } from './inspect-flags.js';

/** `l2flow <command>`: exit 0 ok, 1 failure, 2 bad usage or configuration. */

const USAGE = `usage: l2flow <command> [flags]

commands:
  start                        migrate, then run; with nothing configured (no L2FLOW_CONFIG, no L2FLOW_CONN_DWH), the demo
  migrate                      create or upgrade l2flow's tables and the md schema, install the flag trigger
  run [--inspect] [--inspect-port N]
                               run the workflow runtime (long-running; SIGTERM/SIGINT stop it gracefully);
                               --inspect shows the live actors in the Stately inspector (relay on port 8090)
  trigger [--date YYYY-MM-DD]  queue a run for a logical date (default: today in the workflow timezone)
  status [--date D] [--json] [--limit N]
                               grid of recent runs (dates down, steps across), or one run's timeline
  backfill --from D1 --to D2 [--dry-run] [--no-wait]
                               queue a run per date and follow them to the end (exit 1 if any failed)
  cancel --date YYYY-MM-DD     cancel a queued or running run wherever it runs (its warehouse query too; no mail)
${CLEAR_USAGE}
${DIAGRAM_USAGE}
${CONFIG_USAGE}
${DEMO_USAGE}

configuration: environment variables (see README), optionally L2FLOW_CONFIG=<file.yaml|json>`;

/** Entry point of the bin; resolves to the process exit code. */
export async function main(argv: string[], io: Out = processIo(process.env)): Promise<number> {
  const [command, ...rest] = argv;
  try {
    switch (command) {
      case 'start': {
        parseFlags('start', rest, []);
        if (!configuredBy(process.env)) return await cmdDemo([], io, process.env, { runUntilStopped, main });
        const migrated = await withApi((l2) => cmdMigrate(l2, io));
        return migrated === 0 ? await cmdRun(io, undefined) : migrated;
      }
      case 'demo':
        return await cmdDemo(rest, io, process.env, { runUntilStopped, main });
      case 'migrate':
        parseFlags('migrate', rest, []);
        return await withApi((l2) => cmdMigrate(l2, io));
      case 'run': {
        const f = parseFlags('run', rest, RUN_FLAGS);
        return await cmdRun(io, runInspect(f));
      }
      case 'trigger': {
        const f = parseFlags('trigger', rest, [{ name: 'date', type: 'string', description: 'the logical date, YYYY-MM-DD' }]);
        return await withApi((l2) => cmdTrigger(l2, f.date as string | undefined, io));
      }
      case 'status': {
        const f = parseStatusFlags(rest);
        return await withApi((l2) => cmdStatus(l2, f, io));
      }
      case 'backfill': {
        const f = parseBackfillFlags(rest);
        return await withApi((l2) => cmdBackfill(l2, f, io));
      }
      case 'cancel': {
        const f = parseFlags('cancel', rest, [{ name: 'date', type: 'string', description: 'the logical date of the run to cancel, YYYY-MM-DD' }]);
        if (f.date === undefined) throw new UsageError('cancel: --date is required, e.g. l2flow cancel --date 2024-03-15');
        return await withApi((l2) => cmdCancel(l2, f.date as string, io));
      }
      case 'clear':
        return await withApi((l2) => cmdClear(l2, rest, io));
      case 'mark':
        return await withApi((l2) => cmdMark(l2, rest, io));
      // No configuration and no database: it only reads the machine definition.
      case 'diagram':
        return await cmdDiagram(rest, io);
      // The configuration only: nothing connects.
      case 'config':
        return await cmdConfig(rest, io);
      case undefined:
      case 'help':
      case '--help':
      case '-h':
        if (command === undefined) {
          io.err(USAGE);
          return 2;
        }
        io.out(USAGE);
        return 0;
      default:
        throw new UsageError(`unknown command "${command}"\n${USAGE}`);
    }
  } catch (err) {
    if (err instanceof UsageError || err instanceof ConfigError || (err instanceof L2flowError && err.code === 'NOT_MIGRATED')) {
      io.err(`l2flow: ${err.message}`);
      // Someone who started with the demo and types a command from the README without `demo`.
      if (err instanceof ConfigError && err.key.startsWith('L2FLOW_CONN_') && !configuredBy(process.env) && command !== 'demo') {
        io.err(`  (nothing is configured: to run it against the demo that npm start runs, write npx l2flow demo ${argv.join(' ')})`);
      }
      return 2;
    }
    io.err(`l2flow ${command}: ${toErrorInfo(err).message}`);
    return 1;
  }
}

/** Commands other than `run` need only the warehouse; the API is closed (its connections ended) afterwards. */
async function withApi(fn: (l2: L2flow) => Promise<number>): Promise<number> {
  const l2 = createL2flow({ env: process.env, scope: 'dwh', applicationName: 'l2flow-cli' });
  try {
    return await fn(l2);
  } finally {
    await l2.stop();
  }
}

async function cmdMigrate(l2: L2flow, io: Out): Promise<number> {
  const { applied, flagTrigger } = await l2.migrate();
  const { flagTable } = l2.config.flagSensor;
  const trigger = flagTrigger === 'installed'
    ? `notify trigger installed on ${flagTable}`
    : `notify trigger on ${flagTable} skipped (sensors.wait_for_l2_full_load.notify: false): the flag sensor polls`;
  io.out(`${applied.length ? `applied ${applied.join(', ')}` : 'schema up to date'}; ${trigger}`);
  return 0;
}

async function cmdTrigger(l2: L2flow, dateFlag: string | undefined, io: Out): Promise<number> {
  const { run, created } = await l2.trigger(dateFlag === undefined ? undefined : parseDate('date', dateFlag)).catch((err: unknown) => {
    if (err instanceof L2flowError && err.code === 'BEFORE_START_DATE') throw new UsageError(`--date ${err.message}`);
    throw err;
  });
  if (created) {
    io.out(`queued ${run.run_id}: logical date ${run.logical_date}, business date ${run.business_date}`);
    return 0;
  }
  io.out(`a run for ${run.logical_date} already exists: ${run.run_id} is ${run.status}`);
  return run.status === 'queued' || run.status === 'running' ? 0 : 1;
}

async function cmdCancel(l2: L2flow, dateFlag: string, io: Out): Promise<number> {
  const date = parseDate('date', dateFlag);
  const result = await l2.cancel(date);
  if (!result) {
    io.err(`no run for ${date}: nothing to cancel`);
    return 1;
  }
  if (!result.cancelled) {
    io.err(`the run for ${date} (${result.run.run_id}) is already ${result.run.status}: nothing to cancel`);
    return 1;
  }
  io.out(`cancelled ${result.run.run_id} (was ${result.run.status}${result.run.current_step ? ` in ${result.run.current_step}` : ''})`);
  return 0;
}

async function cmdRun(io: Out, inspect: L2flowOptions['inspect']): Promise<number> {
  return runUntilStopped(createL2flow({ env: process.env, inspect }), io);
}

/** Start `l2`, call `onStarted`, and run until SIGTERM/SIGINT, then stop gracefully: `l2flow run`, and the demo's runtime. */
async function runUntilStopped(l2: L2flow, io: Out, onStarted?: () => Promise<void>): Promise<number> {
  const { logger } = l2;
  let stopping: Promise<void> | null = null;
  let firstSignalAt = 0;
  const stop = (signal: string) => {
    if (stopping) {
      // Ctrl-C under `npm start` reaches us twice at once (from the terminal and forwarded by npm): only a
      // signal sent deliberately later forces the exit.
      if (Date.now() - firstSignalAt < 500) return;
      logger.warn({ signal }, 'second signal: exiting now');
      logger.flush();
      process.exit(1);
    }
    firstSignalAt = Date.now();
    logger.info({ signal }, 'stopping: no new work, persisting runs, closing connections');
    stopping = l2.stop();
  };
  const onTerm = () => stop('SIGTERM');
  const onInt = () => stop('SIGINT');
  process.on('SIGTERM', onTerm);
  process.on('SIGINT', onInt);
  try {
    try {
      await l2.start();
    } catch (err) {
      await l2.stop().catch(() => undefined);
      if (err instanceof L2flowError && err.code === 'FLAG_TRIGGER_MISSING') {
        io.err(`l2flow run: ${err.message}`);
        return 2;
      }
      throw err;
    }
    logger.info({ workflowId: l2.config.workflowId, timezone: l2.config.timezone }, 'l2flow running; waiting for runs');
    if (l2.httpUrl) io.out(`l2flow: HTTP API on ${l2.httpUrl}`);
    await onStarted?.().catch(async (err: unknown) => {
      await l2.stop().catch(() => undefined);
      throw err;
    });
    // The interval also keeps the process alive while every connection is down and reconnecting on unref'd timers.
    await new Promise<void>((resolve, reject) => {
      const check = setInterval(() => {
        if (stopping) {
          clearInterval(check);
          stopping.then(resolve, reject);
        }
      }, 50);
    });
    logger.info('stopped');
    logger.flush();
    return 0;
  } finally {
    process.off('SIGTERM', onTerm);
    process.off('SIGINT', onInt);
  }
}
