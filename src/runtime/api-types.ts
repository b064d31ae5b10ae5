/** The embeddable API's types and its error class; createL2flow itself is in api.ts. */
import type { Observable } from 'rxjs';
import type { EmailOutboxStatus } from '../services/mail/index.js';
import type { AuditRow } from './audit.js';
import type { Config, FileConfig } from './config.js';
import type { Logger } from './logger.js';
import type { MigrateResult } from './migrate.js';
import type { BackfillDate } from './backfill.js';
import type { RunRow, RunStatus, RunSummary, StepRow } from './run-store.js';
import type { SkippedSummary } from './schedule-store.js';
import type { ClearedRun } from './run-actions.js';
import type { WaitDescription } from './waits.js';
import type { RunEvent } from './supervisor.js';
import type { MetricsProvider } from './metrics.js';

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

