import { userInfo } from 'node:os';
import pg from 'pg';
import { Subject, type Observable } from 'rxjs';
import { addDays, dateInZone, isIsoDate } from '../lib/dates.js';
import { toErrorInfo } from '../lib/errors.js';
import { withTransaction } from '../services/db/index.js';
import { emailOutboxStatus, type EmailOutboxStatus } from '../services/mail/index.js';
import { listAudit, writeAudit, type AuditRow } from './audit.js';
import { createApp, createPool, type App } from './app.js';
import { ConfigError, connectionUris, loadConfig, redactUri, type Config, type FileConfig } from './config.js';
import { createLogger, secretsOf, type Logger } from './logger.js';
import { checkFlagTrigger, migrate, type MigrateResult } from './migrate.js';
import { checkRange, datesBetween, judgeDates, type BackfillDate } from './backfill.js';
import { cancelRun, createRun, createRuns, getRunByDate, listRuns, listSteps, runsBetween, stepsOfRuns, type RunRow, type RunStatus, type RunSummary, type StepRow } from './run-store.js';
import { skippedSummary, type SkippedSummary } from './schedule-store.js';
import { clearRuns, markRun, RunActionError, type ClearedRun } from './run-actions.js';
import { describeWait, type WaitDescription } from './waits.js';
import { startInspector, type RunInspector } from './inspect.js';
import type { RunEvent } from './supervisor.js';
import { processMetricsProvider, type MetricsProvider } from './metrics.js';
import { createReadiness, startHttpServer, type HttpServer } from './http/index.js';

/**
 * The runtime as a library: what `l2flow <command>` does, callable from a host Node service. Configuration is
 * validated when the instance is created (a ConfigError names the key); nothing connects until a method needs to.
 */

export type L2flowErrorCode =
  /** A date argument is not a calendar date YYYY-MM-DD. */
  | 'INVALID_DATE'
  /** trigger(), backfill(): the logical date is before the workflow's start date. */
  | 'BEFORE_START_DATE'
  /** backfill(): `to` is before `from`, or the range holds more than MAX_BACKFILL_DATES dates. */
  | 'INVALID_RANGE'
  /** trigger(): manual runs are off (schedule.manual: false). */
  | 'MANUAL_DISABLED'
  /** l2flow's tables are missing: run migrate() first. */
  | 'NOT_MIGRATED'
  /** start(): the flag table or its notify trigger is missing. */
  | 'FLAG_TRIGGER_MISSING'
  /** start() on an instance created with `scope: 'dwh'`, or any call after stop(). */
  | 'NOT_AVAILABLE'
  /** The warehouse could not be reached or refused a query; `cause` holds the original error. */
  | 'DATABASE_ERROR'
  /** clear()/mark(): no run for the date(s). */
  | 'NO_RUNS'
  /** clear(): a run of the range is queued or running. */
  | 'RUN_ACTIVE'
  /** clear(): `fromStep` is not a step that can be cleared; the message lists those that can. */
  | 'BAD_STEP';

/** A failure of an API call, with a stable `code` to branch on; messages name the database without its password. */
export class L2flowError extends Error {
  override readonly name = 'L2flowError';
  constructor(
    readonly code: L2flowErrorCode,
    message: string,
    opts: { cause?: unknown } = {},
  ) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
  }
}

/** The L2FLOW_CONFIG file's settings as an object: same keys, same validation, plus `connections` by connection id. */
export type ConfigObject = FileConfig;

export interface L2flowOptions {
  /** Settings with the file's keys; replaces the L2FLOW_CONFIG file. */
  config?: ConfigObject;
  /** Environment overlay (it wins over `config`, as over the file). Default: process.env without `config`, {} with it. */
  env?: NodeJS.ProcessEnv;
  /** `dwh`: only the warehouse connection is needed (migrate, trigger, read, cancel); start() then throws. Default `full`. */
  scope?: 'full' | 'dwh';
  /**
   * Your pino logger, or options for l2flow's own (level: default the config's logLevel; destination: default
   * stdout). Only l2flow's own logger also scrubs connection secrets from every value it logs.
   */
  logger?: Logger | { level?: string; destination?: { write(line: string): void } };
  /** application_name of the query connections, `l2flow-…` so the session killer spares them. Default `l2flow-api`. */
  applicationName?: `l2flow${string}`;
  /** Who is acting, for l2flow.audit (triggers, cancels, clears, marks); a call's own `actor` wins. Default: the OS user. */
  actor?: string;
  /**
   * Report every run's actor to the Stately inspector: a relay on `port` (default 8090) that start() opens and
   * stop() closes; its page's URL is logged. Off by default.
   */
  inspect?: boolean | { port?: number };
}

/** Who did it and why, recorded in l2flow.audit. */
export interface ActionOptions {
  actor?: string;
  reason?: string;
}

export interface ClearOptions extends ActionOptions {
  /** First logical date, YYYY-MM-DD. */
  from: string;
  /** Last logical date, inclusive; default `from`. */
  to?: string;
  /** The step to re-run from; default each run's failed step (a successful run: the first step). */
  fromStep?: string;
  /** Only say which steps of which runs would re-run. */
  dryRun?: boolean;
}

/** A run with its step history (every try of every attempt), its failure mails and its audit entries. */
export interface RunDetails extends RunRow {
  steps: StepRow[];
  failureEmail: EmailOutboxStatus[];
  audit: AuditRow[];
  /** What the run waits on while it is in a sensor (waits.ts), else null. */
  waitingOn: WaitDescription | null;
}

export interface L2flow {
  /** The validated configuration (it holds connection URIs with their secrets: never log it as is). */
  readonly config: Config;
  /** The logger l2flow writes to. */
  readonly logger: Logger;
  /** The HTTP server's URL once start() has bound it (http.enabled), else null. */
  readonly httpUrl: string | null;
  /**
   * Every run event of runs this instance executes (started, restored, transition, finished, released). Hot, no
   * replay; subscribe any time, before start() too. Emitted synchronously: keep subscribers cheap and non-throwing.
   * Completes on stop().
   */
  readonly events$: Observable<RunEvent>;
  /** Prometheus metrics for `/metrics`: the running runtime's and the process's; before start(), the process's only. */
  readonly metrics: MetricsProvider;
  /** Apply pending migrations and (re)install the flag table's notify trigger; safe to repeat and to run concurrently. */
  migrate(): Promise<MigrateResult>;
  /** Start executing runs (claiming queued and orphaned ones); throws FLAG_TRIGGER_MISSING before anything starts. */
  start(): Promise<void>;
  /** Stop gracefully: runs in flight are persisted and released (another process resumes them), connections closed. */
  stop(): Promise<void>;
  /** Queue the run of a logical date (default: today in the workflow timezone); an existing run is returned as it is. */
  trigger(logicalDate?: string, opts?: ActionOptions): Promise<{ run: RunRow; created: boolean }>;
  /** Cancel the queued or running run of a date wherever it runs; null when there is none. */
  cancel(logicalDate: string, opts?: ActionOptions): Promise<{ run: RunRow; cancelled: boolean } | null>;
  /** Re-run finished runs of a date range from a step, each as a new attempt (same run, same load id). */
  clear(opts: ClearOptions): Promise<ClearedRun[]>;
  /** Set a run's outcome by hand (a running run is stopped); `changed` is false when it already had it. */
  mark(logicalDate: string, status: 'success' | 'failed', opts?: ActionOptions): Promise<{ runId: string; was: string; changed: boolean }>;
  /** The run of a logical date with its steps and failure mails, or null. */
  getRun(logicalDate: string): Promise<RunDetails | null>;
  /** The newest runs first (default 20), optionally a later page, within logical dates from … to, of some statuses. */
  listRuns(opts?: { limit?: number; offset?: number; from?: string; to?: string; status?: RunStatus[] }): Promise<RunRow[]>;
  /**
   * Queue a run (triggered_by `backfill`) for every logical date from … to that has none; existing runs are left as
   * they are. With `dryRun` nothing is created. Each date comes back with its verdict and its run.
   */
  backfill(from: string, to: string, opts?: { dryRun?: boolean }): Promise<BackfillDate[]>;
  /** The runs of logical dates from … to, oldest first, without snapshots (cheap enough to poll for years of dates). */
  runsBetween(from: string, to: string): Promise<RunSummary[]>;
  /** The step rows of each run's current attempt, by run id. */
  stepsOf(runs: Pick<RunRow, 'run_id' | 'attempt'>[]): Promise<Map<string, StepRow[]>>;
  /** Dates a schedule passed over that still have no run: how many, by reason, and the newest few. */
  skippedDates(): Promise<SkippedSummary>;
}

function isLogger(l: L2flowOptions['logger']): l is Logger {
  return typeof (l as Logger | undefined)?.child === 'function';
}

function checkDate(date: string): string {
  if (!isIsoDate(date)) throw new L2flowError('INVALID_DATE', `"${String(date).slice(0, 40)}" is not a date: write YYYY-MM-DD, e.g. 2024-03-15`);
  return date;
}

/** Create the runtime from a settings object and/or the environment; throws ConfigError naming the bad key. */
export function createL2flow(options: L2flowOptions = {}): L2flow {
  const env = options.env ?? (options.config === undefined ? process.env : {});
  const scope = options.scope ?? 'full';
  const config = loadConfig(env, { scope, file: options.config });
  const database = redactUri(config.connections.dwh);
  const events = new Subject<RunEvent>();
  const actorOf = (opts: ActionOptions | undefined) => opts?.actor ?? options.actor ?? userInfo().username;
  let logger: Logger | undefined;
  let pool: pg.Pool | undefined;
  let app: App | undefined;
  let inspector: RunInspector | undefined;
  let starting: Promise<void> | undefined;
  let stopping: Promise<void> | undefined;
  let http: HttpServer | undefined;
  // Scrubbed from every log line and every HTTP answer.
  const secrets = [...secretsOf(connectionUris(config)), ...(config.http.token ? [config.http.token.secret] : [])];

  const getLogger = (): Logger => {
    if (isLogger(options.logger)) return options.logger;
    const own = options.logger;
    logger ??= createLogger({
      level: own?.level ?? config.logLevel,
      secrets,
      ...(own?.destination ? { destination: own.destination } : {}),
    });
    return logger;
  };

  /** Run `fn` on the query pool; failures become L2flowErrors that name the database, never its password. */
  async function query<T>(fn: (pool: pg.Pool) => Promise<T>): Promise<T> {
    if (stopping) throw new L2flowError('NOT_AVAILABLE', 'this l2flow instance is stopped: create a new one with createL2flow()');
    if (!pool) {
      // The one pool of this instance: the runtime started by start() shares it, so the connection budget holds.
      pool = createPool(config, options.applicationName ?? 'l2flow');
      // An idle connection's failure surfaces on the next query; nothing to do here.
      pool.on('error', () => undefined);
    }
    try {
      return await fn(pool);
    } catch (err) {
      if (err instanceof L2flowError || err instanceof ConfigError) throw err;
      if (err instanceof RunActionError) throw new L2flowError(err.code, err.message);
      const code = (err as { code?: unknown }).code;
      if (code === '42P01' && /l2flow\./.test((err as Error).message)) {
        throw new L2flowError('NOT_MIGRATED', `l2flow's tables are missing (database ${database}): run \`l2flow migrate\` first`, { cause: err });
      }
      throw new L2flowError('DATABASE_ERROR', `${toErrorInfo(err).message} (database ${database})`, { cause: err });
    }
  }

  async function startOnce(): Promise<void> {
    if (scope !== 'full') throw new L2flowError('NOT_AVAILABLE', "start() needs the full configuration: create the instance without scope: 'dwh'");
    const problem = await query((p) => checkFlagTrigger(p, config.flagSensor.flagTable));
    if (problem) throw new L2flowError('FLAG_TRIGGER_MISSING', problem);
    const port = typeof options.inspect === 'object' ? options.inspect.port : undefined;
    inspector ??= options.inspect ? await startInspector({ logger: getLogger(), ...(port === undefined ? {} : { port }) }) : undefined;
    const built = createApp(config, getLogger(), { pool: await query(async (p) => p), ...(inspector ? { inspect: inspector.inspect } : {}) });
    built.supervisor.events$.subscribe({ next: (e) => events.next(e) });
    app = built;
    try {
      await built.start();
      if (config.http.enabled) {
        const readiness = createReadiness({ pool: built.pool, listenerConnected: () => built.hub.isConnected() });
        http = await startHttpServer({ ...config.http, api: l2flow, readiness, metrics: l2flow.metrics, secrets, logger: getLogger() });
      }
    } catch (err) {
      app = undefined;
      await built.stop().catch(() => undefined);
      throw err;
    }
  }

  /** The audit record of a trigger or cancel of one run. */
  const audit = (action: 'trigger' | 'cancel', run: RunRow, opts: ActionOptions | undefined, details: Record<string, unknown>) => ({
    action,
    workflowId: config.workflowId,
    logicalDates: [run.logical_date],
    runIds: [run.run_id],
    reason: opts?.reason,
    actor: actorOf(opts),
    details,
  });

  const l2flow: L2flow = {
    config,
    get logger() {
      return getLogger();
    },
    get httpUrl() {
      return http?.url ?? null;
    },
    events$: events.asObservable(),
    metrics: {
      contentType: processMetricsProvider().contentType,
      text: () => (app ? app.metrics.text() : processMetricsProvider().text()),
    },
    migrate: () => query((p) => migrate(p, { flagTable: config.flagSensor.flagTable })),
    start() {
      if (stopping) return Promise.reject(new L2flowError('NOT_AVAILABLE', 'this l2flow instance is stopped: create a new one with createL2flow()'));
      // A failed start may be retried; concurrent calls share one attempt.
      starting ??= startOnce().catch((err: unknown) => {
        starting = undefined;
        throw err;
      });
      return starting;
    },
    stop() {
      stopping ??= (async () => {
        await starting?.catch(() => undefined);
        try {
          // The server first: no request starts while the runtime goes away, and open event streams end.
          await http?.stop();
          await app?.stop();
        } finally {
          inspector?.stop();
          await pool?.end();
          events.complete();
        }
      })();
      return stopping;
    },
    async trigger(logicalDate, opts) {
      if (!config.schedule.manual) {
        throw new L2flowError('MANUAL_DISABLED', 'manual runs are off (schedule.manual: false): set it to true (or L2FLOW_MANUAL=true) to queue runs by hand');
      }
      const date = logicalDate === undefined ? dateInZone(config.timezone) : checkDate(logicalDate);
      if (date < config.startDate) {
        throw new L2flowError('BEFORE_START_DATE', `${date} is before the workflow's start date ${config.startDate}: pick a later date or change workflow.startDate`);
      }
      return query((p) =>
        withTransaction(p, async (client) => {
          const r = await createRun(client, { workflowId: config.workflowId, logicalDate: date, businessDate: addDays(date, -1), triggeredBy: 'manual' });
          await writeAudit(client, audit('trigger', r.run, opts, { created: r.created }));
          return r;
        }),
      );
    },
    async cancel(logicalDate, opts) {
      const date = checkDate(logicalDate);
      return query((p) =>
        withTransaction(p, async (client) => {
          const r = await cancelRun(client, config.workflowId, date);
          if (r?.cancelled) await writeAudit(client, audit('cancel', r.run, opts, { was: r.run.status }));
          return r;
        }),
      );
    },
    async clear(opts) {
      const from = checkDate(opts.from);
      const to = opts.to === undefined ? from : checkDate(opts.to);
      if (to < from) throw new L2flowError('INVALID_DATE', `the range ${from} .. ${to} ends before it starts: give the earlier date first`);
      return query((p) =>
        clearRuns(p, { workflowId: config.workflowId, from, to, fromStep: opts.fromStep, dryRun: opts.dryRun, reason: opts.reason, actor: actorOf(opts) }),
      );
    },
    async mark(logicalDate, status, opts) {
      const date = checkDate(logicalDate);
      return query((p) => markRun(p, { workflowId: config.workflowId, logicalDate: date, status, reason: opts?.reason, actor: actorOf(opts) }));
    },
    async getRun(logicalDate) {
      const date = checkDate(logicalDate);
      return query(async (p) => {
        const run = await getRunByDate(p, config.workflowId, date);
        if (!run) return null;
        return {
          ...run,
          steps: await listSteps(p, run.run_id),
          failureEmail: await emailOutboxStatus(p, run.run_id),
          audit: await listAudit(p, config.workflowId, date),
          waitingOn: await describeWait(p, config, run),
        };
      });
    },
    async listRuns(opts = {}) {
      const { limit = 20, offset, status: statuses } = opts;
      const [from, to] = [opts.from, opts.to].map((d) => (d === undefined ? undefined : checkDate(d)));
      return query((p) => listRuns(p, config.workflowId, { limit, offset, from, to, statuses }));
    },
    async backfill(from, to, opts = {}) {
      const problem = checkRange(checkDate(from), checkDate(to), config.startDate);
      if (problem) throw new L2flowError(problem.flag === 'from' && from < config.startDate ? 'BEFORE_START_DATE' : 'INVALID_RANGE', problem.message);
      const dates = datesBetween(from, to);
      return query(async (p) => {
        const created = opts.dryRun ? [] : await createRuns(p, { workflowId: config.workflowId, dates, triggeredBy: 'backfill' });
        return judgeDates(dates, await runsBetween(p, config.workflowId, from, to), new Set(created));
      });
    },
    async runsBetween(from, to) {
      return query((p) => runsBetween(p, config.workflowId, checkDate(from), checkDate(to)));
    },
    async stepsOf(runs) {
      return query((p) => stepsOfRuns(p, runs));
    },
    skippedDates: () => query((p) => skippedSummary(p, config.workflowId)),
  };
  return l2flow;
}
