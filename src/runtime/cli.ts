import pg from 'pg';
import { addDays, dateInZone, isIsoDate } from '../lib/dates.js';
import { emailOutboxStatus } from '../services/mail/index.js';
import { toErrorInfo } from '../lib/errors.js';
import { parseFlags, UsageError } from './args.js';
import { createApp } from './app.js';
import { ConfigError, loadConfig, redactUri, type Config } from './config.js';
import { createLogger, secretsOf } from './logger.js';
import { checkFlagTrigger, migrate } from './migrate.js';
import { cancelRun, createRun, getRunByDate, listRuns, listSteps, type RunRow } from './run-store.js';

/** `l2flow <command>`: exit 0 ok, 1 failure, 2 bad usage or configuration. */

const USAGE = `usage: l2flow <command> [flags]

commands:
  migrate                      create or upgrade l2flow's tables and the md schema, install the flag trigger
  run                          run the workflow runtime (long-running; SIGTERM/SIGINT stop it gracefully)
  trigger [--date YYYY-MM-DD]  queue a run for a logical date (default: today in the workflow timezone)
  status [--date D] [--json]   show recent runs, or one run with its steps and failure mail
  cancel --date YYYY-MM-DD     cancel a queued or running run wherever it runs (its warehouse query too; no mail)

configuration: environment variables (see README), optionally L2FLOW_CONFIG=<file.yaml|json>`;

type Out = { out: (s: string) => void; err: (s: string) => void };
const stdio: Out = { out: (s) => process.stdout.write(`${s}\n`), err: (s) => process.stderr.write(`${s}\n`) };

/** Entry point of the bin; resolves to the process exit code. */
export async function main(argv: string[], io: Out = stdio): Promise<number> {
  const [command, ...rest] = argv;
  try {
    switch (command) {
      case 'migrate':
        parseFlags('migrate', rest, []);
        return await cmdMigrate(loadConfig(undefined, { scope: 'dwh' }), io);
      case 'run':
        parseFlags('run', rest, []);
        return await cmdRun(loadConfig(), io);
      case 'trigger': {
        const f = parseFlags('trigger', rest, [{ name: 'date', type: 'string', description: 'the logical date, YYYY-MM-DD' }]);
        return await cmdTrigger(loadConfig(undefined, { scope: 'dwh' }), f.date as string | undefined, io);
      }
      case 'status': {
        const f = parseFlags('status', rest, [
          { name: 'date', type: 'string', description: 'the logical date, YYYY-MM-DD' },
          { name: 'json', type: 'boolean', description: 'print JSON' },
        ]);
        return await cmdStatus(loadConfig(undefined, { scope: 'dwh' }), f.date as string | undefined, f.json === true, io);
      }
      case 'cancel': {
        const f = parseFlags('cancel', rest, [{ name: 'date', type: 'string', description: 'the logical date of the run to cancel, YYYY-MM-DD' }]);
        if (f.date === undefined) throw new UsageError('cancel: --date is required, e.g. l2flow cancel --date 2024-03-15');
        return await cmdCancel(loadConfig(undefined, { scope: 'dwh' }), f.date as string, io);
      }
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
    if (err instanceof UsageError || err instanceof ConfigError) {
      io.err(`l2flow: ${err.message}`);
      return 2;
    }
    io.err(`l2flow ${command}: ${toErrorInfo(err).message}`);
    return 1;
  }
}

function connect(config: Config): pg.Pool {
  const pool = new pg.Pool({ connectionString: config.connections.dwh, max: 2, application_name: 'l2flow-cli' });
  pool.on('error', () => undefined);
  return pool;
}

async function withPool<T>(config: Config, fn: (pool: pg.Pool) => Promise<T>): Promise<T> {
  const pool = connect(config);
  try {
    return await fn(pool);
  } catch (err) {
    if (err instanceof UsageError || err instanceof ConfigError) throw err;
    const code = (err as { code?: unknown }).code;
    if (code === '42P01' && /l2flow\./.test((err as Error).message)) {
      throw new UsageError(`l2flow's tables are missing (database ${redactUri(config.connections.dwh)}): run \`l2flow migrate\` first`);
    }
    // Connection errors must name the server, never the password.
    const info = toErrorInfo(err);
    throw new Error(`${info.message} (database ${redactUri(config.connections.dwh)})`, { cause: err });
  } finally {
    await pool.end();
  }
}

async function cmdMigrate(config: Config, io: Out): Promise<number> {
  const { applied } = await withPool(config, (pool) => migrate(pool, { flagTable: config.flagSensor.flagTable }));
  io.out(applied.length ? `applied ${applied.join(', ')}; notify trigger installed on ${config.flagSensor.flagTable}` : `schema up to date; notify trigger installed on ${config.flagSensor.flagTable}`);
  return 0;
}

function parseDate(flag: string, value: string): string {
  if (!isIsoDate(value)) throw new UsageError(`--${flag} "${value}" is not a date: write YYYY-MM-DD, e.g. --${flag} 2024-03-15`);
  return value;
}

async function cmdTrigger(config: Config, dateFlag: string | undefined, io: Out): Promise<number> {
  const logicalDate = dateFlag === undefined ? dateInZone(config.timezone) : parseDate('date', dateFlag);
  if (logicalDate < config.startDate) {
    throw new UsageError(`--date ${logicalDate} is before the workflow's start date ${config.startDate}: pick a later date or change workflow.startDate`);
  }
  const { run, created } = await withPool(config, (pool) =>
    createRun(pool, { workflowId: config.workflowId, logicalDate, businessDate: addDays(logicalDate, -1), triggeredBy: 'manual' }),
  );
  if (created) {
    io.out(`queued ${run.run_id}: logical date ${logicalDate}, business date ${run.business_date}`);
    return 0;
  }
  io.out(`a run for ${logicalDate} already exists: ${run.run_id} is ${run.status}`);
  return run.status === 'queued' || run.status === 'running' ? 0 : 1;
}

function fmtTime(d: Date | null): string {
  return d ? d.toISOString().replace('T', ' ').slice(0, 19) : '-';
}

/** Columns as wide as their widest cell; the last column is not padded. */
function printTable(io: Out, header: string[], rows: string[][]): void {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!))).join('  ').trimEnd();
  io.out(line(header));
  for (const r of rows) io.out(line(r));
}

function runJson(r: RunRow) {
  return {
    logical_date: r.logical_date,
    business_date: r.business_date,
    run_id: r.run_id,
    status: r.status,
    attempt: r.attempt,
    load_id: r.load_id === null ? null : Number(r.load_id),
    current_step: r.current_step,
    started_at: r.started_at,
    finished_at: r.finished_at,
    error: r.error,
  };
}

async function cmdStatus(config: Config, dateFlag: string | undefined, json: boolean, io: Out): Promise<number> {
  const date = dateFlag === undefined ? undefined : parseDate('date', dateFlag);
  return withPool(config, async (pool) => {
    if (date === undefined) {
      const runs = await listRuns(pool, config.workflowId, 20);
      if (json) io.out(JSON.stringify(runs.map(runJson)));
      else if (runs.length === 0) io.out('no runs yet: queue one with `l2flow trigger --date YYYY-MM-DD`');
      else {
        const rows = runs.map((r) => [r.logical_date, r.status, r.load_id ?? '-', r.current_step ?? '-', fmtTime(r.started_at), fmtTime(r.finished_at), r.error?.message ?? '']);
        printTable(io, ['logical_date', 'status', 'load_id', 'current_step', 'started_at', 'finished_at', 'error'], rows);
      }
      return 0;
    }
    const run = await getRunByDate(pool, config.workflowId, date);
    if (!run) {
      if (json) io.out(JSON.stringify(null));
      else io.out(`no run for ${date}: queue one with \`l2flow trigger --date ${date}\``);
      return 1;
    }
    const steps = await listSteps(pool, run.run_id, run.attempt);
    const mail = await emailOutboxStatus(pool, run.run_id);
    if (json) {
      io.out(JSON.stringify({ ...runJson(run), steps, failure_email: mail }));
      return 0;
    }
    io.out(`${run.run_id}  ${run.status}  (attempt ${run.attempt}, load id ${run.load_id ?? '-'})`);
    io.out(`logical date ${run.logical_date}, business date ${run.business_date}; current step: ${run.current_step ?? '-'}`);
    if (run.error) io.out(`error: ${run.error.code}: ${run.error.message}`);
    for (const s of steps) {
      io.out(`  ${s.step.padEnd(36)} ${s.status.padEnd(9)} ${fmtTime(s.started_at)} -> ${fmtTime(s.finished_at)}${s.error ? `  ${s.error.code}: ${s.error.message}` : ''}`);
    }
    for (const m of mail) {
      io.out(`failure mail: ${m.status} after ${m.tries} tr${m.tries === 1 ? 'y' : 'ies'}${m.lastError ? `; last error: ${m.lastError}` : ''}`);
    }
    return 0;
  });
}

async function cmdCancel(config: Config, dateFlag: string, io: Out): Promise<number> {
  const date = parseDate('date', dateFlag);
  const result = await withPool(config, (pool) => cancelRun(pool, config.workflowId, date));
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

async function cmdRun(config: Config, io: Out): Promise<number> {
  const logger = createLogger({ level: config.logLevel, secrets: secretsOf(Object.values(config.connections)) });
  const problem = await withPool(config, (pool) => checkFlagTrigger(pool, config.flagSensor.flagTable));
  if (problem) {
    io.err(`l2flow run: ${problem}`);
    return 2;
  }
  const app = createApp(config, logger);
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
    stopping = app.stop();
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  try {
    await app.start();
  } catch (err) {
    await app.stop().catch(() => undefined);
    throw err;
  }
  logger.info({ workflowId: config.workflowId, timezone: config.timezone }, 'l2flow running; waiting for runs');
  await new Promise<void>((resolve) => {
    const check = setInterval(() => {
      if (stopping) {
        clearInterval(check);
        void stopping.then(resolve);
      }
    }, 50);
  });
  logger.info('stopped');
  logger.flush();
  return 0;
}
