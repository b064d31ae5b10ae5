import type { L2flow } from './api.js';
import { parseFlags, UsageError } from './args.js';
import { parseDate, type Out } from './cli-io.js';
import type { SkippedSummary } from './schedule-store.js';
import { gridJson, gridLines, runJson, stateOf } from './status-view.js';
import { stepDurationMs, timelineLines } from './status-timeline.js';

/** `l2flow status [--date D] [--json] [--limit N]`: the grid of recent runs, or one run's timeline. */

/** Parse the status flags; throws UsageError naming the bad one. */
export function parseStatusFlags(args: string[]): { date?: string; json: boolean; limit: number } {
  const f = parseFlags('status', args, [
    { name: 'date', type: 'string', description: 'the logical date, YYYY-MM-DD' },
    { name: 'json', type: 'boolean', description: 'print JSON' },
    { name: 'limit', type: 'string', description: 'how many dates the grid shows, newest first (default 20)' },
  ]);
  const limit = f.limit === undefined ? 20 : Number(f.limit);
  if (!Number.isInteger(limit) || limit < 1 || limit > 1000) throw new UsageError(`status: --limit "${String(f.limit)}" must be a whole number from 1 to 1000`);
  if (f.limit !== undefined && f.date !== undefined) throw new UsageError('status: --limit is for the grid: leave it out with --date');
  return { ...(f.date === undefined ? {} : { date: parseDate('date', f.date as string) }), json: f.json === true, limit };
}

/** Print the grid or the timeline; exit 1 when the date has no run. */
export async function cmdStatus(l2: L2flow, flags: { date?: string; json: boolean; limit: number }, io: Out): Promise<number> {
  const color = io.tty?.color ?? false;
  if (flags.date === undefined) {
    const runs = await l2.listRuns({ limit: flags.limit });
    const steps = await l2.stepsOf(runs);
    const grid = runs.map((run) => ({ run, steps: steps.get(run.run_id) ?? [] }));
    if (flags.json) io.out(JSON.stringify(grid.map(gridJson)));
    else if (runs.length === 0) io.out('no runs yet: queue one with `l2flow trigger --date YYYY-MM-DD` or `l2flow backfill --from D1 --to D2`');
    else for (const line of gridLines(grid, { color, width: io.tty?.columns ?? 100 })) io.out(line);
    if (!flags.json) printSkipped(io, await l2.skippedDates());
    return 0;
  }
  const run = await l2.getRun(flags.date);
  if (!run) {
    if (flags.json) io.out(JSON.stringify(null));
    else io.out(`no run for ${flags.date}: queue one with \`l2flow trigger --date ${flags.date}\``);
    return 1;
  }
  if (flags.json) {
    const steps = run.steps.map((s) => ({ ...s, state: stateOf(s), duration_ms: stepDurationMs(s) }));
    io.out(JSON.stringify({ ...runJson(run), steps, failure_email: run.failureEmail, waiting_on: run.waitingOn, audit: run.audit }));
    return 0;
  }
  for (const line of timelineLines(run, { color })) io.out(line);
  return 0;
}

/** One line about dates a schedule passed over (nothing when there are none). */
function printSkipped(io: Out, s: SkippedSummary): void {
  if (s.count === 0) return;
  const reasons = Object.entries(s.byReason).map(([r, n]) => `${r} ${n}`).join(', ');
  const more = s.count > s.latest.length ? ', …' : '';
  io.out(`skipped: ${s.count} date${s.count === 1 ? '' : 's'} (${reasons}; newest ${s.latest.map((d) => d.logicalDate).join(', ')}${more}) — see l2flow.skipped_date`);
}
