import { ConfigError } from './config-file.js';
import type { Settings } from './config-schema.js';

/**
 * The `schedule` settings in the runtime's shape: each schedule's date window resolved against the workflow's,
 * so the scheduler never has to know where a bound came from.
 */

/** The dates a schedule may create runs for: startDate … endDate (null: no end), both inclusive. */
export interface DateWindow {
  startDate: string;
  endDate: string | null;
}

export interface ScheduleConfig {
  /** `l2flow trigger` / trigger() may queue runs. */
  manual: boolean;
  cron: ({ expression: string; enabled: boolean; catchup: boolean } & DateWindow) | null;
  onFlag: { enabled: boolean; lookbackDays: number } & DateWindow;
}

/** The later of two dates, the earlier of two end dates (null: open), written YYYY-MM-DD so they compare as text. */
const later = (a: string, b: string | undefined) => (b !== undefined && b > a ? b : a);
const earlier = (a: string | undefined, b: string | undefined) => (a === undefined ? b : b === undefined || a < b ? a : b) ?? null;

/** One window: a schedule's own bounds narrow the workflow's; an empty window is a mistake worth stopping for. */
function windowOf(s: Settings, key: string, own: { startDate?: string | undefined; endDate?: string | undefined }, source?: string): DateWindow {
  const w = { startDate: later(s.workflow.startDate, own.startDate), endDate: earlier(s.workflow.endDate, own.endDate) };
  if (w.endDate !== null && w.endDate < w.startDate) {
    throw new ConfigError(
      own.endDate !== undefined ? `${key}.endDate` : 'workflow.endDate',
      `${w.endDate} is before the start date ${w.startDate}${own.startDate !== undefined ? ` (${key}.startDate)` : ' (workflow.startDate)'}: pick an end date on or after it, or remove it`,
      source,
    );
  }
  return w;
}

/** The schedule settings with every window resolved; throws ConfigError when an end date is before its start date. */
export function scheduleFromSettings(s: Settings, source?: string): ScheduleConfig {
  windowOf(s, 'workflow', {}, source);
  const { cron, onFlag, manual } = s.schedule;
  return {
    manual,
    cron: cron && {
      expression: cron.expression,
      enabled: cron.enabled,
      catchup: cron.catchup,
      ...windowOf(s, 'schedule.cron', cron, source),
    },
    onFlag: { enabled: onFlag.enabled, lookbackDays: onFlag.lookbackDays, ...windowOf(s, 'schedule.onFlag', onFlag, source) },
  };
}
