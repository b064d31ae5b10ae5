import type pg from 'pg';
import { type Observable, filter, map } from 'rxjs';
import { type CheckEvent, createConditionWaiter } from './condition-waiter.js';
import { addDays, isIsoDate } from '../../lib/dates.js';
import { StepError, throwIfAborted } from '../../lib/errors.js';
import { quoteQualified } from '../db/index.js';
import type { Logger, SensorInput, StepFn } from '../types.js';

/** Channel of l2flow.notify_dwh_flag(): `{ flag_cd, business_date }` for every insert/update of the flag table. */
export const DWH_FLAG_CHANNEL = 'l2flow_dwh_flag';
/** Channel of l2flow.notify_run_change(): `{ run_id, workflow_id, logical_date, status, current_step }`. */
export const RUN_CHANNEL = 'l2flow_run';

/** A notification as the runtime's hub hands it over (structural, so services need not import the runtime). */
export interface SensorNotification {
  channel: string;
  payload: unknown;
}

export interface SensorOutput {
  satisfiedAt: string;
  checks: number;
}

export interface PreviousRunSensorOutput extends SensorOutput {
  previousLogicalDate: string;
  /** True when the previous date falls before the workflow's start date, so there is nothing to wait for. */
  skipped: boolean;
}

/**
 * One batched check query of a sensor: which keys it asked about (flag sensor: business dates; previous-run
 * sensor: `YYYY-MM-DD:workflowId`), which held, why it ran and how long it took. See CheckEvent.
 */
export type SensorCheck = CheckEvent<string>;

interface SensorDeps {
  pool: pg.Pool;
  notifications$: Observable<SensorNotification>;
  reconnects$: Observable<void>;
  logger: Logger;
  /** Told about every check query once it answered or failed; must be cheap, throws are logged and ignored. */
  onCheck?: (e: SensorCheck) => void;
}

/** wait_for_l2_full_load: waits until the flag table holds `flagCode` for the run's business date. */
export function createFlagSensor(
  opts: SensorDeps & { flagTable: string; flagCode: string; pokeIntervalMs: number },
): StepFn<SensorInput, SensorOutput> {
  const { flagTable, flagCode } = opts;
  // to_char, not ::text: a warehouse with DateStyle 'SQL, DMY' would print 01/12/2024.
  const sql = `select distinct to_char(bussines_date, 'YYYY-MM-DD') as d from ${quoteQualified(flagTable)}
    where flag_cd = $1 and bussines_date = any($2::date[])`;
  const waiter = createConditionWaiter<string>({
    name: 'wait_for_l2_full_load',
    describeKey: (date) => `flag '${flagCode}' in ${flagTable} for business date ${date}`,
    check: async (dates) => new Set((await opts.pool.query<{ d: string }>(sql, [flagCode, dates])).rows.map((r) => r.d)),
    hints$: flagDates(opts.notifications$, flagCode).pipe(map((date) => [date])),
    reconnects$: opts.reconnects$,
    pollIntervalMs: opts.pokeIntervalMs,
    logger: opts.logger,
    onCheck: opts.onCheck,
  });
  return async (input, signal) => {
    assertDate(input.businessDate, 'businessDate');
    const { checks } = await waiter
      .wait(input.businessDate, { deadline: input.deadline, signal, since: input.startedAt })
      .catch(inRun(input, `load L1 to L2 for ${input.businessDate} (or set the flag), then re-run the step`));
    return { satisfiedAt: new Date().toISOString(), checks };
  };
}

/** wait_for_success_end: waits until the same workflow's run for logicalDate − executionDeltaDays succeeded. */
export function createPreviousRunSensor(
  opts: SensorDeps & { startDate: string; executionDeltaDays: number; pokeIntervalMs: number },
): StepFn<SensorInput, PreviousRunSensorOutput> {
  assertDate(opts.startDate, 'startDate');
  const delta = opts.executionDeltaDays;
  const sql = `select to_char(logical_date, 'YYYY-MM-DD') || ':' || workflow_id as k from l2flow.run
    where status = 'success' and (workflow_id, logical_date) in (select * from unnest($1::text[], $2::date[]))`;
  const waiter = createConditionWaiter<string>({
    name: 'wait_for_success_end',
    describeKey: (key) => `a successful run of ${key.slice(11)} for logical date ${key.slice(0, 10)}`,
    check: async (keys) => {
      const { rows } = await opts.pool.query<{ k: string }>(sql, [keys.map((k) => k.slice(11)), keys.map((k) => k.slice(0, 10))]);
      return new Set(rows.map((r) => r.k));
    },
    hints$: hintsFrom(opts.notifications$, RUN_CHANNEL, (p) =>
      p.status === 'success' && typeof p.workflow_id === 'string' && isDate(p.logical_date)
        ? runKey(p.workflow_id, p.logical_date)
        : null,
    ).pipe(map((key) => [key])),
    reconnects$: opts.reconnects$,
    pollIntervalMs: opts.pokeIntervalMs,
    logger: opts.logger,
    onCheck: opts.onCheck,
  });
  return async (input, signal) => {
    throwIfAborted(signal, 'wait_for_success_end');
    assertDate(input.logicalDate, 'logicalDate');
    const previousLogicalDate = addDays(input.logicalDate, -delta); // UTC calendar arithmetic
    if (previousLogicalDate < opts.startDate) {
      return { satisfiedAt: new Date().toISOString(), checks: 0, previousLogicalDate, skipped: true };
    }
    const { checks } = await waiter
      .wait(runKey(input.workflowId, previousLogicalDate), { deadline: input.deadline, signal, since: input.startedAt })
      .catch(inRun(input, `finish (or mark successful) the run of ${previousLogicalDate}, then re-run the step`));
    return { satisfiedAt: new Date().toISOString(), checks, previousLogicalDate, skipped: false };
  };
}

/** The business dates that flag notifications name for `flagCode` (the sensor's hints; schedule.onFlag's too). */
export function flagDates(notifications$: Observable<SensorNotification>, flagCode: string): Observable<string> {
  return hintsFrom(notifications$, DWH_FLAG_CHANNEL, (p) => (p.flag_cd === flagCode && isDate(p.business_date) ? p.business_date : null));
}

/** Dates arrive in notifications and inputs as plain JSON; only real YYYY-MM-DD calendar dates are used. */
function isDate(value: unknown): value is string {
  return typeof value === 'string' && isIsoDate(value);
}

function assertDate(value: string, what: string): void {
  if (!isDate(value)) throw new StepError('INTERNAL', `${what} "${value}" is not a calendar date written YYYY-MM-DD`);
}

// The date has a fixed width, so the workflow id after it may contain any character.
function runKey(workflowId: string, logicalDate: string): string {
  return `${logicalDate}:${workflowId}`;
}

function hintsFrom(
  notifications$: Observable<SensorNotification>,
  channel: string,
  keyOf: (payload: Record<string, unknown>) => string | null,
): Observable<string> {
  return notifications$.pipe(
    filter((n) => n.channel === channel && typeof n.payload === 'object' && n.payload !== null),
    map((n) => keyOf(n.payload as Record<string, unknown>)),
    filter((key): key is string => key !== null),
  );
}

/** Add the run's logical date and what to do next to a sensor timeout; other errors pass through. */
function inRun(input: SensorInput, next: string): (err: unknown) => never {
  return (err) => {
    if (err instanceof StepError && err.code === 'SENSOR_TIMEOUT') {
      throw new StepError('SENSOR_TIMEOUT', `${err.message}; run of logical date ${input.logicalDate}: ${next}`, {
        cause: err,
        details: { ...err.details, logicalDate: input.logicalDate, runId: input.runId },
      });
    }
    throw err;
  };
}
