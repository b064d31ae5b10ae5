import { isIsoDate } from '../lib/dates.js';
import { UsageError } from './args.js';

/** What every CLI command writes to: stdout and stderr lines. */
export type Out = { out: (s: string) => void; err: (s: string) => void };

/** A date flag's value, or a UsageError that says how to write it. */
export function parseDate(flag: string, value: string): string {
  if (!isIsoDate(value)) throw new UsageError(`--${flag} "${value}" is not a date: write YYYY-MM-DD, e.g. --${flag} 2024-03-15`);
  return value;
}

/** A timestamp as operators read it, UTC to the second; `-` for none. */
export function fmtTime(d: Date | null): string {
  return d ? d.toISOString().replace('T', ' ').slice(0, 19) : '-';
}
