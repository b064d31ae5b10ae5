import { styleText } from 'node:util';
import { formatDuration } from '../lib/time.js';
import type { Out } from './cli-io.js';
import type { RunSummary } from './run-store.js';

/**
 * What a backfill prints while it follows. On a terminal: one progress line redrawn in place (done / total, failed,
 * elapsed, ETA) with failures printed above it. Otherwise (a pipe, a log file, a test): one line per finished run.
 */

export interface Counts {
  total: number;
  succeeded: number;
  failed: number;
  blocked: number;
}

export interface Progress {
  /** A run of the range reached a final status while we followed. */
  finished(run: RunSummary): void;
  update(counts: Counts): void;
  /** A message for the operator (stderr), kept above the progress line. */
  note(message: string): void;
  /** Leave the last progress line on screen (terminal) and stop redrawing. */
  end(): void;
}

/** `2024-05-01  success    load id 17  took 1.2 s`, or the status and the run's error (which names the step). */
export function finishedLine(r: RunSummary): string {
  const took = r.started_at && r.finished_at ? `took ${formatDuration(r.finished_at.getTime() - r.started_at.getTime())}` : '';
  if (r.status === 'success') return `${r.logical_date}  success    load id ${r.load_id ?? '-'}  ${took}`.trimEnd();
  const err = r.error ? `${r.error.code}: ${r.error.message}  ` : '';
  return `${r.logical_date}  ${r.status.padEnd(9)}  ${err}${took}`.trimEnd();
}

/**
 * The ETA is the remaining runs times the mean time per run finished while following: the chain executes one date
 * after another, so a run's own duration (which includes waiting for its predecessor) would overstate it.
 */
export function eta(remaining: number, finishedWhileFollowing: number, followingMs: number): string {
  if (remaining === 0) return '0 s';
  if (finishedWhileFollowing === 0) return '–';
  return formatDuration((followingMs / finishedWhileFollowing) * remaining);
}

/** A progress reporter for `io`: a redrawn bar when `io.tty` is set, lines otherwise. */
export function createProgress(io: Out, startedAt: number): Progress {
  const tty = io.tty;
  let counts: Counts = { total: 0, succeeded: 0, failed: 0, blocked: 0 };
  let finishedWhileFollowing = 0;
  let lastFinishAt = startedAt;
  let drawn = false;
  let timer: NodeJS.Timeout | undefined;

  const bar = (): string => {
    const done = counts.succeeded + counts.failed;
    const width = Math.max(10, Math.min(30, (tty?.columns ?? 80) - 70));
    const filled = counts.total ? Math.round((done / counts.total) * width) : 0;
    const paint = (color: Parameters<typeof styleText>[0], s: string) => (tty?.color && s ? styleText(color, s) : s);
    const remaining = counts.total - done - counts.blocked;
    const parts = [
      `[${paint('green', '█'.repeat(filled))}${'░'.repeat(width - filled)}]`,
      `${done}/${counts.total} done`,
      counts.failed ? paint('red', `${counts.failed} failed`) : '0 failed',
      ...(counts.blocked ? [paint('yellow', `${counts.blocked} blocked`)] : []),
      `elapsed ${formatDuration(Date.now() - startedAt)}`,
      `ETA ${eta(remaining, finishedWhileFollowing, lastFinishAt - startedAt)}`,
    ];
    return parts.join('  ');
  };
  const draw = () => {
    if (!tty) return;
    tty.write(`\r\x1b[2K${bar()}`);
    drawn = true;
  };
  /** Print a permanent line above the bar. */
  const above = (print: () => void) => {
    if (tty && drawn) tty.write('\r\x1b[2K');
    print();
    draw();
  };
  if (tty) {
    timer = setInterval(draw, 1_000);
    timer.unref();
  }

  return {
    finished(run) {
      finishedWhileFollowing++;
      lastFinishAt = Date.now();
      // On a terminal the bar counts successes; only what needs a look gets a line of its own.
      if (!tty || run.status !== 'success') above(() => io.out(finishedLine(run)));
    },
    update(next) {
      counts = next;
      draw();
    },
    note(message) {
      above(() => io.err(message));
    },
    end() {
      clearInterval(timer);
      if (tty && drawn) tty.write('\n');
      drawn = false;
    },
  };
}
