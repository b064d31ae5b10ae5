import type pg from 'pg';
import { cronDates } from '../lib/cron.js';
import { addDays, dateInZone } from '../lib/dates.js';
import { toErrorInfo } from '../lib/errors.js';
import { backoffDelay, type RetryPolicy } from '../lib/retry.js';
import { withTransaction } from '../services/db/index.js';
import type { ScheduleConfig } from './config.js';
import type { Logger } from './logger.js';
import { latestRunDate, lockScheduleState, recordSkipped, saveScheduleState } from './schedule-store.js';
import { createRuns } from './run-store.js';

/**
 * schedule.cron on the leader: at each due date's first tick, one transaction decides every date due since the last
 * decided one (runs created, others recorded as skipped) and moves the schedule's state to the newest, so a new
 * leader continues from there. Between rounds a timer waits for the next due tick (at most an hour, so a changed
 * wall clock is noticed).
 */

export interface CronRound {
  /** Dates that were due in this round, oldest first. */
  due: string[];
  /** Of those, the dates whose run this round created (a date that already had a run is not listed). */
  created: string[];
  /** Of those, the dates recorded as skipped, and why. */
  skipped: string[];
  reason: 'catchup_false' | 'disabled' | null;
  /** The newest date decided so far (this round's or an earlier one's): the next due date comes after it. */
  through: string;
}

export interface CronSchedule {
  /** Start deciding due dates (this process became the leader). */
  begin(): void;
  /** Stop; resolves once a round in flight ended. */
  end(): Promise<void>;
  /** Decide the due dates now (also what every timer does). */
  runDue(): Promise<CronRound>;
  /** When the next date becomes due, while running; null when stopped or past the end date. */
  nextAt(): Date | null;
}

const SCHEDULE = 'cron';
/** A wall-clock change (NTP step, VM resume) is noticed within this; the tick computation itself needs no re-check. */
const MAX_WAIT_MS = 3_600_000;
/** A failed round (database down) is tried again: 1 s, 2 s, 4 s … 60 s. */
const RETRY: RetryPolicy = { maxTries: Infinity, baseDelayMs: 1_000, maxDelayMs: 60_000, jitter: 'equal' };

/** Build the cron schedule of one process; nothing runs until begin(). */
export function createCronSchedule(o: {
  pool: pg.Pool;
  workflowId: string;
  timezone: string;
  cron: NonNullable<ScheduleConfig['cron']>;
  logger: Logger;
  now: () => Date;
}): CronSchedule {
  const { cron, workflowId } = o;
  const dates = cronDates(cron.expression, o.timezone);
  const log = o.logger.child({ module: 'scheduler', schedule: SCHEDULE, expression: cron.expression });
  let running = false;
  let timer: NodeJS.Timeout | null = null;
  let next: Date | null = null;
  let inFlight: Promise<CronRound> | null = null;
  let failures = 0;

  async function decide(): Promise<CronRound> {
    const now = o.now();
    return withTransaction(o.pool, async (client) => {
      const last = await lockScheduleState(client, workflowId, SCHEDULE);
      // First round ever: continue after the newest run up to today (or from the start date), not from the epoch.
      const from = last ?? (await latestRunDate(client, workflowId, dateInZone(o.timezone, now)));
      const after = from !== null && from >= cron.startDate ? from : addDays(cron.startDate, -1);
      const due = dates.dueDates(after, cron.endDate, now);
      const round: CronRound = { due, created: [], skipped: [], reason: null, through: due.at(-1) ?? after };
      if (due.length === 0) return round;
      const keep = !cron.enabled ? [] : cron.catchup ? due : due.slice(-1);
      round.skipped = due.filter((d) => !keep.includes(d));
      round.reason = round.skipped.length === 0 ? null : cron.enabled ? 'catchup_false' : 'disabled';
      round.created = await createRuns(client, { workflowId, dates: keep, triggeredBy: 'scheduled' });
      if (round.reason) await recordSkipped(client, workflowId, SCHEDULE, round.skipped, round.reason);
      await saveScheduleState(client, workflowId, SCHEDULE, due.at(-1)!);
      return round;
    });
  }

  function arm(ms: number): void {
    if (timer) clearTimeout(timer);
    timer = setTimeout(() => void schedule.runDue().catch(() => undefined), Math.min(Math.max(ms, 0), MAX_WAIT_MS));
    timer.unref();
  }

  async function round(): Promise<CronRound> {
    try {
      const r = await decide();
      if (failures > 0) log.info('cron schedule works again');
      failures = 0;
      if (r.due.length > 0) {
        log.info({ due: r.due, created: r.created, skipped: r.skipped, reason: r.reason ?? undefined }, 'cron schedule decided %d date(s)', r.due.length);
      }
      if (running) {
        next = dates.nextDueAt(r.through, cron.endDate);
        if (next) arm(next.getTime() - o.now().getTime() + 5); // +5 ms: never wake a hair before the tick
        else log.info({ endDate: cron.endDate }, 'cron schedule has no date left before its end date');
      }
      return r;
    } catch (err) {
      failures += 1;
      const wait = backoffDelay(RETRY, failures);
      if (failures === 1) log.warn({ err: toErrorInfo(err), retryInMs: wait }, 'cron schedule round failed; will retry');
      else log.debug({ err: toErrorInfo(err), retryInMs: wait }, 'cron schedule round still fails');
      if (running) arm(wait);
      throw err;
    }
  }

  const schedule: CronSchedule = {
    begin() {
      if (running) return;
      running = true;
      log.info({ catchup: cron.catchup, enabled: cron.enabled, startDate: cron.startDate, endDate: cron.endDate }, 'cron schedule started on this process (leader)');
      void schedule.runDue().catch(() => undefined);
    },
    async end() {
      running = false;
      next = null;
      if (timer) clearTimeout(timer);
      timer = null;
      await inFlight?.catch(() => undefined);
    },
    runDue() {
      // One round at a time: a timer and a caller asking together share it.
      inFlight ??= round().finally(() => {
        inFlight = null;
      });
      return inFlight;
    },
    nextAt: () => next,
  };
  return schedule;
}
