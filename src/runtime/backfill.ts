import { addDays, isIsoDate } from '../lib/dates.js';
import { STEP_IDS } from '../machines/steps.js';
import { FINAL_STATUSES, type RunStatus, type RunSummary } from './run-store.js';

/**
 * Backfill: one run per logical date of a range, chained by wait_for_success_end on the previous date's success.
 * This module judges dates and finds runs that can no longer move; creating and following live in the API and CLI.
 */

/** Ten years of daily runs: a larger range is almost certainly a typo in a year. */
export const MAX_BACKFILL_DATES = 3660;

/** What backfill does (or, in a dry run, would do) with a date: queue a new run, or leave the existing one as it is. */
export type BackfillVerdict = 'new' | RunStatus;

export interface BackfillDate {
  date: string;
  verdict: BackfillVerdict;
  /** The run as it is after backfill (null in a dry run for a new date). */
  run: RunSummary | null;
}

/** A range problem, with the flag to name in a usage message. */
export interface RangeProblem {
  flag: 'from' | 'to';
  message: string;
}

/** Why `from` … `to` cannot be backfilled, or null when it can. */
export function checkRange(from: string, to: string, startDate: string): RangeProblem | null {
  for (const [flag, value] of [['from', from], ['to', to]] as const) {
    if (!isIsoDate(value)) return { flag, message: `--${flag} "${value}" is not a date: write YYYY-MM-DD, e.g. --${flag} 2024-03-15` };
  }
  if (to < from) return { flag: 'to', message: `--to ${to} is before --from ${from}: give the earlier date as --from` };
  if (from < startDate) {
    return { flag: 'from', message: `--from ${from} is before the workflow's start date ${startDate}: start at ${startDate} or later, or change workflow.startDate` };
  }
  const count = datesBetween(from, to, MAX_BACKFILL_DATES + 1).length;
  if (count > MAX_BACKFILL_DATES) {
    return { flag: 'to', message: `${from} … ${to} is more than ${MAX_BACKFILL_DATES} dates: backfill at most ten years at a time` };
  }
  return null;
}

/** The calendar dates from … to, inclusive, at most `max` of them. */
export function datesBetween(from: string, to: string, max = Infinity): string[] {
  const dates: string[] = [];
  for (let d = from; d <= to && dates.length < max; d = addDays(d, 1)) dates.push(d);
  return dates;
}

/** Each date's verdict given the runs that exist and the dates whose run backfill just `created`. */
export function judgeDates(dates: string[], runs: RunSummary[], created: ReadonlySet<string> = new Set()): BackfillDate[] {
  const byDate = new Map(runs.map((r) => [r.logical_date, r]));
  return dates.map((date) => {
    const run = byDate.get(date) ?? null;
    return { date, verdict: run && !created.has(date) ? run.status : 'new', run };
  });
}

/** Why an unfinished run cannot finish: the earliest predecessor in its chain that failed, was cancelled or is missing. */
export interface Blocked {
  /** The logical date the chain stops at. */
  on: string;
  /** That date's run status, or `missing` when it has no run. */
  status: 'failed' | 'cancelled' | 'missing';
}

const PAST_SENSOR = STEP_IDS.indexOf('wait_for_success_end') + 1;

/** True while the run has not yet passed wait_for_success_end (queued, or in a step up to it). */
function beforeSuccessEnd(run: RunSummary): boolean {
  if (run.status === 'queued') return true;
  if (run.status !== 'running') return false;
  const at = STEP_IDS.indexOf(run.current_step as (typeof STEP_IDS)[number]);
  return at >= 0 && at < PAST_SENSOR;
}

/**
 * The unfinished runs of `dates` that wait (in wait_for_success_end) for a predecessor that will never succeed:
 * it failed, was cancelled, has no run, or is itself blocked. `runs` must include the predecessor of the first date.
 */
export function findBlocked(dates: string[], runs: RunSummary[], o: { deltaDays: number; startDate: string }): Map<string, Blocked> {
  const byDate = new Map(runs.map((r) => [r.logical_date, r]));
  const blocked = new Map<string, Blocked>();
  for (const date of dates) {
    const run = byDate.get(date);
    const prev = addDays(date, -o.deltaDays);
    if (!run || !beforeSuccessEnd(run) || prev < o.startDate) continue;
    const before = byDate.get(prev);
    const inherited = blocked.get(prev);
    if (inherited) blocked.set(date, inherited);
    else if (!before) blocked.set(date, { on: prev, status: 'missing' });
    else if (before.status === 'failed' || before.status === 'cancelled') blocked.set(date, { on: prev, status: before.status });
  }
  return blocked;
}

/** True for success, failed and cancelled. */
export function isFinal(status: RunStatus): boolean {
  return FINAL_STATUSES.includes(status);
}
