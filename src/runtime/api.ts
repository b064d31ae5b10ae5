import { userInfo } from 'node:os';
import pg from 'pg';
import { Subject } from 'rxjs';
import { addDays, dateInZone, isIsoDate } from '../lib/dates.js';
import { toErrorInfo } from '../lib/errors.js';
import { withTransaction } from '../services/db/index.js';
import { emailOutboxStatus } from '../services/mail/index.js';
import { listAudit, writeAudit } from './audit.js';
import type { App } from './app.js';
import { createPool, createWarehousePool } from './databases.js';
import { ConfigError, connectionUris, loadConfig, redactUri, stateIsWarehouse } from './config.js';
import { createLogger, logFormatFor, secretsOf, type Logger } from './logger.js';
import { checkFlagTrigger, migrate } from './migrate.js';
import { checkRange, datesBetween, judgeDates } from './backfill.js';
import { cancelRun, createRun, createRuns, getRunByDate, listRuns, listSteps, runsBetween, stepsOfRuns, type RunRow } from './run-store.js';
import { skippedSummary } from './schedule-store.js';
import { clearRuns, markRun, RunActionError } from './run-actions.js';
import { describeWait } from './waits.js';
import type { RunInspector } from './inspect.js';
import type { RunEvent } from './supervisor.js';
import type { HttpServer } from './http/index.js';

import { L2flowError, type ActionOptions, type L2flow, type L2flowOptions } from './api-types.js';

export { L2flowError } from './api-types.js';
export type { ActionOptions, ClearOptions, ConfigObject, L2flow, L2flowErrorCode, L2flowOptions, RunDetails } from './api-types.js';

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
  // l2flow's tables are where most queries go: errors name that database (the warehouse unless `state` is set).
  const database = redactUri(config.connections.state);
  const events = new Subject<RunEvent>();
  const actorOf = (opts: ActionOptions | undefined) => opts?.actor ?? options.actor ?? userInfo().username;
  let logger: Logger | undefined;
  let pool: pg.Pool | undefined;
  /** The warehouse's own pool, only when l2flow's tables live elsewhere. */
  let dwhPool: pg.Pool | undefined;
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
      // A destination of the caller's gets JSON unless L2FLOW_LOG_FORMAT asks otherwise; stdout follows the terminal.
      format: own?.destination ? (config.logFormat ?? 'json') : logFormatFor(config.logFormat),
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

  /** Run `fn` on both databases (one pool object when l2flow's tables live in the warehouse). */
  function withDatabases<T>(fn: (db: { state: pg.Pool; dwh: pg.Pool }) => Promise<T>): Promise<T> {
    return query((state) => {
      if (!stateIsWarehouse(config) && !dwhPool) {
        dwhPool = createWarehousePool(config, options.applicationName ?? 'l2flow')!;
        dwhPool.on('error', () => undefined);
      }
      return fn({ state, dwh: dwhPool ?? state });
    });
  }

  async function startOnce(): Promise<void> {
    if (scope !== 'full') throw new L2flowError('NOT_AVAILABLE', "start() needs the full configuration: create the instance without scope: 'dwh'");
    const problem = await withDatabases((db) => checkFlagTrigger(db.dwh, config.flagSensor.flagTable, { trigger: config.flagSensor.notify }));
    if (problem) throw new L2flowError('FLAG_TRIGGER_MISSING', problem);
    const port = typeof options.inspect === 'object' ? options.inspect.port : undefined;
    // The inspector and the HTTP server (hono, the dashboard) are loaded only when asked for, after the runtime's
    // own modules: start-up does not pay for them otherwise.
    inspector ??= options.inspect ? await (await import('./inspect.js')).startInspector({ logger: getLogger(), ...(port === undefined ? {} : { port }) }) : undefined;
    const db = await withDatabases(async (d) => d);
    // The runtime's modules (XState, the services, prom-client …) are loaded by start() only: the CLI's other commands
    // (status, trigger, backfill …) start without them.
    const { createApp } = await import('./app.js');
    const built = createApp(config, getLogger(), { pool: db.state, dwhPool: db.dwh, ...(inspector ? { inspect: inspector.inspect } : {}) });
    built.supervisor.events$.subscribe({ next: (e) => events.next(e) });
    app = built;
    try {
      await built.start();
      if (config.http.enabled) {
        const { createReadiness, startHttpServer } = await import('./http/index.js');
        const readiness = createReadiness({
          pool: built.pool, dwh: built.dwh, listenerConnected: () => built.hub.isConnected(), listenerDelivery: () => built.notifyDelivery(),
        });
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
      // prom-client's PROMETHEUS_CONTENT_TYPE; prom-client itself is loaded by the first scrape or start().
      contentType: 'text/plain; version=0.0.4; charset=utf-8',
      text: async () => (app ? app.metrics.text() : (await import('./metrics.js')).processMetricsProvider().text()),
    },
    migrate: () => withDatabases((db) => migrate(db, { flagTable: config.flagSensor.flagTable, flagTrigger: config.flagSensor.notify })),
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
          await dwhPool?.end();
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
