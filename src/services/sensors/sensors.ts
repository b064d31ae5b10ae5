import type pg from 'pg';
import { type Observable, filter, map } from 'rxjs';
import { type CheckEvent, createConditionWaiter } from './condition-waiter.js';
import { addDays, isIsoDate } from '../../lib/dates.js';
import { StepError, throwIfAborted } from '../../lib/errors.js';
import { prepared, quoteQualified } from '../db/index.js';
import type { Logger, SensorInput, StepFn } from '../types.js';
import { describePreviousRun, previousRunStates, STATE_COLUMNS, stateOfRow, verdictOn, type PreviousRunState, type StateRow } from './previous-run.js';

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
  /** True when there was nothing to wait for: the previous date is before the start date, or it has no run (whenMissing: pass). */
  skipped: boolean;
  /** Set when the step passed because the previous date has no run (whenMissing: pass). */
  missing?: true;
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

/**
 * Runs whose creating statement read their flag row (schedule.onFlag creates a run only where the flag table holds
 * the flag): for them that statement was the sensor's first check, a query of the flag table and not a notification,
 * so the sensor passes without asking again. A seed is put in just before the run's actor starts and taken by the
 * sensor's first start; the creator removes what was not taken, so a seed never outlives the run's start.
 */
export interface FlagSeeds {
  add(runId: string): void;
  /** True (once) when the run's flag was read by the statement that created it. */
  take(runId: string): boolean;
  delete(runId: string): void;
}

export function createFlagSeeds(): FlagSeeds {
  const seeded = new Set<string>();
  return { add: (runId) => void seeded.add(runId), take: (runId) => seeded.delete(runId), delete: (runId) => void seeded.delete(runId) };
}

/** wait_for_l2_full_load: waits until the flag table holds `flagCode` for the run's business date. */
export function createFlagSensor(
  opts: SensorDeps & { flagTable: string; flagCode: string; pokeIntervalMs: number } & {
    /** The warehouse, where the flag table is; `pool` (l2flow's tables) is not used by this sensor. */
    dwh: pg.Pool;
    /** Runs created by the statement that read their flag row (schedule.onFlag): no second look. */
    seeds?: FlagSeeds;
  },
): StepFn<SensorInput, SensorOutput> {
  const { flagTable, flagCode } = opts;
  // to_char, not ::text: a warehouse with DateStyle 'SQL, DMY' would print 01/12/2024. Dates are sent as text and
  // cast in the statement: against a date[] parameter PostgreSQL finds a custom plan for the array's length cheaper
  // than the generic one and plans the statement again at every check (~0.15 ms of the sensor's reaction); the cast
  // (stable: it depends on DateStyle; an ISO date reads the same under every DateStyle) is not folded into a custom
  // plan, so the generic plan is kept after the first five (pg_stat_statements: plans 6 per connection, not one per
  // call). A check of one date (a notification's, a new run's) has its own statement: no array to read, a plain
  // index scan, ~0.06 ms less of an idle backend's round trip than the array form. No `distinct`: a flag written
  // twice comes back twice into the Set, and the sort it needed cost ~0.03 ms of every check.
  const from = `select to_char(bussines_date, 'YYYY-MM-DD') as d from ${quoteQualified(flagTable)} where flag_cd = $1`;
  const one = prepared('l2flow_flag_check_one', `${from} and bussines_date = $2::text::date`);
  const many = prepared('l2flow_flag_check', `${from} and bussines_date = any($2::text[]::date[])`);
  const waiter = createConditionWaiter<string>({
    name: 'wait_for_l2_full_load',
    describeKey: (date) => `flag '${flagCode}' in ${flagTable} for business date ${date}`,
    check: async (dates) => {
      const query = dates.length === 1 ? { ...one, values: [flagCode, dates[0]] } : { ...many, values: [flagCode, dates] };
      return new Set((await opts.dwh.query<{ d: string }>(query)).rows.map((r) => r.d));
    },
    hints$: flagDates(opts.notifications$, flagCode).pipe(map((date) => [date])),
    reconnects$: opts.reconnects$,
    pollIntervalMs: opts.pokeIntervalMs,
    logger: opts.logger,
    onCheck: opts.onCheck,
  });
  return async (input, signal) => {
    assertDate(input.businessDate, 'businessDate');
    if (opts.seeds?.take(input.runId)) {
      opts.logger.debug({ runId: input.runId, businessDate: input.businessDate }, 'wait_for_l2_full_load: the statement that created the run read the flag');
      return { satisfiedAt: new Date().toISOString(), checks: 0 };
    }
    const { checks } = await waiter
      .wait(input.businessDate, { deadline: input.deadline, signal, since: input.startedAt })
      .catch(inRun(input, `load L1 to L2 for ${input.businessDate} (or set the flag), then re-run the step`));
    return { satisfiedAt: new Date().toISOString(), checks };
  };
}

/**
 * wait_for_success_end: waits until the same workflow's run for logicalDate − executionDeltaDays succeeded. The
 * policy decides the other states at every check: no run yet → `whenMissing` (wait, or pass), failed or cancelled →
 * `whenFailed` (wait, as Airflow, or fail at once naming the blocking date and its error).
 */
export function createPreviousRunSensor(
  opts: SensorDeps & {
    startDate: string; executionDeltaDays: number; pokeIntervalMs: number;
    whenMissing: 'wait' | 'pass'; whenFailed: 'wait' | 'fail'; timezone: string;
  },
): StepFn<SensorInput, PreviousRunSensorOutput> {
  assertDate(opts.startDate, 'startDate');
  const delta = opts.executionDeltaDays;
  // A key is released once the policy has a verdict other than "wait"; the step then reads the row and acts on it.
  // The released keys come with the run's state, so the step acts on it without reading the row again.
  const sql = `select to_char(k.d, 'YYYY-MM-DD') || ':' || k.w as k, k.w, to_char(k.d, 'YYYY-MM-DD') as d, ${STATE_COLUMNS}
      from unnest($1::text[], $2::date[]) as k(w, d) left join l2flow.run r on r.workflow_id = k.w and r.logical_date = k.d
     where r.status = 'success' or (r.run_id is null and $3) or (r.status in ('failed', 'cancelled') and $4)`;
  const policy = [opts.whenMissing === 'pass', opts.whenFailed === 'fail'];
  /** The state each key was released with, and when: read by the step whose wait that check ended. */
  const released = new Map<string, { state: PreviousRunState; at: number }>();
  const waiter = createConditionWaiter<string>({
    name: 'wait_for_success_end',
    describeKey: (key) => `a successful run of ${key.slice(11)} for logical date ${key.slice(0, 10)}`,
    check: async (keys) => {
      const { rows } = await opts.pool.query<StateRow & { k: string; w: string }>({
        ...prepared('l2flow_previous_run_check', sql), values: [keys.map((k) => k.slice(11)), keys.map((k) => k.slice(0, 10)), ...policy] });
      const at = Date.now();
      for (const r of rows) released.set(r.k, { state: stateOfRow(r.w, r), at });
      return new Set(rows.map((r) => r.k));
    },
    // Only a run that ended can release a wait (a NOTIFY never says a run is missing): the step changes of the run
    // being waited for (about ten per run) cost no check query each.
    hints$: hintsFrom(opts.notifications$, RUN_CHANNEL, (p) =>
      typeof p.workflow_id === 'string' && isDate(p.logical_date) && (p.status === undefined || ENDED.has(p.status))
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
    let checks = 0;
    const key = runKey(input.workflowId, previousLogicalDate);
    for (;;) {
      const waitedFrom = Date.now();
      const waited = await waiter
        .wait(key, { deadline: input.deadline, signal, since: input.startedAt })
        .catch(inRun(input, `finish (or mark successful) the run of ${previousLogicalDate}, then re-run the step`));
      checks += waited.checks;
      // The state the releasing check read, when that check ran during this wait; else read it now.
      const fresh = released.get(key);
      released.delete(key);
      const [state] = fresh && fresh.at >= waitedFrom ? [fresh.state] : await previousRunStates(opts.pool, input.workflowId, [previousLogicalDate]);
      const verdict = state ? verdictOn(state, opts) : 'wait';
      if (verdict === 'done' || verdict === 'pass') {
        return { satisfiedAt: new Date().toISOString(), checks, previousLogicalDate, skipped: verdict === 'pass', ...(verdict === 'pass' ? { missing: true } : {}) };
      }
      if (verdict === 'fail') {
        throw new StepError('PREVIOUS_RUN_FAILED',
          `wait_for_success_end: the run of ${describePreviousRun(state!, opts.timezone)} blocks the run of logical date ` +
            `${input.logicalDate} (whenFailed: fail). Fix and re-run ${previousLogicalDate} first, then re-run this run.`,
          { details: { previousLogicalDate, previousStatus: state!.status, failedStep: state!.failedStep, previousError: state!.error } });
      }
      // Changed between the check and the read (e.g. re-queued): wait again with the same deadline.
    }
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

/** The statuses of a run that ended: the only ones a wait_for_success_end check can be released by. */
const ENDED = new Set<unknown>(['success', 'failed', 'cancelled']);

// The date has a fixed width, so the workflow id after it may contain any character.
export function runKey(workflowId: string, logicalDate: string): string {
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
