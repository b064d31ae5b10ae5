import { isIsoDate } from '../lib/dates.js';
import { UsageError } from './args.js';

/** What the CLI's commands print to; shared by every command file. */

/** A terminal stdout: progress lines are redrawn in place and symbols may be coloured. */
export interface Terminal {
  /** Write without a newline (for `\r` redraws). */
  write(s: string): void;
  columns: number;
  /** False under NO_COLOR. */
  color: boolean;
}

export interface Out {
  out: (s: string) => void;
  err: (s: string) => void;
  /** Set only when stdout is a terminal. */
  tty?: Terminal;
}

/** The process's stdout and stderr, with `tty` when stdout is a terminal. */
export function processIo(env: NodeJS.ProcessEnv): Out {
  // `l2flow status | head`: the reader went away; stop printing quietly instead of crashing on EPIPE.
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') process.exit(process.exitCode ?? 0);
    throw err;
  });
  const io: Out = { out: (s) => process.stdout.write(`${s}\n`), err: (s) => process.stderr.write(`${s}\n`) };
  if (process.stdout.isTTY) {
    io.tty = { write: (s) => process.stdout.write(s), columns: process.stdout.columns || 80, color: !env.NO_COLOR };
  }
  return io;
}

/** `2024-03-15 08:00:01` (UTC), or `-`. */
export function fmtTime(d: Date | null): string {
  return d ? d.toISOString().replace('T', ' ').slice(0, 19) : '-';
}

/** Columns as wide as their widest cell; the last column is not padded. */
export function printTable(io: Out, header: string[], rows: string[][]): void {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!))).join('  ').trimEnd();
  io.out(line(header));
  for (const r of rows) io.out(line(r));
}

/** The value of a date flag, or a UsageError naming the flag. */
export function parseDate(flag: string, value: string): string {
  if (!isIsoDate(value)) throw new UsageError(`--${flag} "${value}" is not a date: write YYYY-MM-DD, e.g. --${flag} 2024-03-15`);
  return value;
}
