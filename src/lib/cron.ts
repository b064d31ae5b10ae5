import { Cron } from 'croner';
import { dateInZone } from './dates.js';

/**
 * Cron schedules as calendar dates: croner computes the ticks in the workflow's time zone (DST-correct: a fixed-time
 * tick in a spring-forward gap runs when the clock has jumped, a repeated hour runs once), and a tick belongs to the
 * date it falls on in that zone. Only the first tick of a date matters: runs are keyed by logical date.
 */

export interface CronDates {
  /** Every date after `after` (exclusive) and up to `until` (inclusive, null: no end) whose first tick is at or before `now`, oldest first. */
  dueDates(after: string, until: string | null, now: Date): string[];
  /** The instant the first date after `after` becomes due, or null when no date up to `until` has a tick. */
  nextDueAt(after: string, until: string | null): Date | null;
}

/** Why croner refuses `expression` (5, 6 or 7 fields, or a preset such as @daily), or null when it accepts it. */
export function cronProblem(expression: string): string | null {
  try {
    new Cron(expression, { paused: true, timezone: 'UTC' });
    return null;
  } catch (err) {
    return (err as Error).message.replace(/^CronPattern: /, '');
  }
}

/** The dates of a cron expression in an IANA time zone; throws RangeError when croner refuses the expression. */
export function cronDates(expression: string, timezone: string): CronDates {
  let cron: Cron;
  try {
    // paused and without a function: croner only computes, it never schedules anything itself.
    cron = new Cron(expression, { paused: true, timezone });
  } catch (err) {
    throw new RangeError(`cron expression "${expression}": ${(err as Error).message}`, { cause: err });
  }
  /** The first tick after the end of `date` in the zone (a string reference is read in the job's time zone). */
  const firstTickAfter = (date: string): { at: Date; date: string } | null => {
    const at = cron.nextRun(`${date}T23:59:59`);
    return at ? { at, date: dateInZone(timezone, at) } : null;
  };
  return {
    dueDates(after, until, now) {
      const dates: string[] = [];
      // One croner lookup per date, however many ticks a day has (an every-second schedule included).
      for (let tick = firstTickAfter(after); tick && tick.at <= now && (until === null || tick.date <= until); tick = firstTickAfter(tick.date)) {
        dates.push(tick.date);
      }
      return dates;
    },
    nextDueAt(after, until) {
      const tick = firstTickAfter(after);
      return tick && (until === null || tick.date <= until) ? tick.at : null;
    },
  };
}
