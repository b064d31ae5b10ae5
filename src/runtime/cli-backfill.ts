import { addDays } from '../lib/dates.js';
import { formatDuration } from '../lib/time.js';
import type { L2flow } from './api.js';
import { parseFlags, UsageError } from './args.js';
import { checkRange, type BackfillDate } from './backfill.js';
import { followBackfill, type FollowResult } from './backfill-follow.js';
import type { Out } from './cli-io.js';

/**
 * `l2flow backfill --from D1 --to D2 [--dry-run] [--no-wait]`: queue one run per date (triggered_by `backfill`) and
 * follow them to the end. The runs are executed by the `l2flow run` processes; this command only creates and follows.
 */

export interface BackfillFlags {
  from: string;
  to: string;
  dryRun: boolean;
  noWait: boolean;
}

/** Parse the backfill flags; throws UsageError naming the bad one (dates are checked against the config later). */
export function parseBackfillFlags(args: string[]): BackfillFlags {
  const f = parseFlags('backfill', args, [
    { name: 'from', type: 'string', description: 'the first logical date, YYYY-MM-DD' },
    { name: 'to', type: 'string', description: 'the last logical date, YYYY-MM-DD (inclusive)' },
    { name: 'dry-run', type: 'boolean', description: 'only say what would happen' },
    { name: 'no-wait', type: 'boolean', description: 'create the runs and exit' },
  ]);
  for (const flag of ['from', 'to'] as const) {
    if (f[flag] === undefined) throw new UsageError(`backfill: --${flag} is required, e.g. l2flow backfill --from 2024-03-01 --to 2024-03-15`);
  }
  if (f['dry-run'] === true && f['no-wait'] === true) throw new UsageError('backfill: --dry-run creates nothing, so --no-wait has nothing to do: give one of them');
  return { from: f.from as string, to: f.to as string, dryRun: f['dry-run'] === true, noWait: f['no-wait'] === true };
}

const VERDICT: Record<BackfillDate['verdict'], string> = {
  new: 'new run',
  queued: 'already queued: will be followed',
  running: 'already running: will be followed',
  success: 'already successful: left as it is',
  failed: 'failed: stays failed (later dates wait for it)',
  cancelled: 'cancelled: stays cancelled (later dates wait for it)',
};

/** One line per date: what backfill does (or would do) with it. */
function verdictLine(d: BackfillDate, dryRun: boolean): string {
  const what = d.verdict === 'new' ? (dryRun ? 'new run (would be queued)' : `new run ${d.run?.run_id ?? ''}`.trimEnd()) : VERDICT[d.verdict];
  const step = d.verdict === 'running' && d.run?.current_step ? ` (in ${d.run.current_step})` : '';
  return `${d.date}  ${what}${step}`;
}

/** Run the command; exit 0 when every date succeeded (or with --no-wait / --dry-run), 1 otherwise, 130 on Ctrl-C. */
export async function cmdBackfill(l2: L2flow, flags: BackfillFlags, io: Out): Promise<number> {
  const { from, to } = flags;
  const problem = checkRange(from, to, l2.config.startDate);
  if (problem) throw new UsageError(`backfill: ${problem.message}`);
  const dates = await l2.backfill(from, to, { dryRun: flags.dryRun });
  const count = (v: BackfillDate['verdict']) => dates.filter((d) => d.verdict === v).length;
  const summary = (['new', 'success', 'failed', 'cancelled', 'running', 'queued'] as const)
    .filter((v) => count(v) > 0)
    .map((v) => `${count(v)} ${v === 'new' ? 'new' : `already ${v === 'success' ? 'successful' : v}`}`)
    .join(', ');
  // Lines per date for a dry run or a short range; a long range gets its summary only.
  if (flags.dryRun || dates.length <= 31) for (const d of dates) io.out(verdictLine(d, flags.dryRun));
  io.out(`${from} … ${to}: ${dates.length} date${dates.length === 1 ? '' : 's'}: ${summary}${flags.dryRun ? '; dry run: nothing created' : ''}`);
  await warnAboutPredecessor(l2, from, io);
  if (flags.dryRun) return 0;
  const again = `l2flow backfill --from ${from} --to ${to}`;
  if (flags.noWait) {
    io.out(`runs queued; an \`l2flow run\` process executes them, ${l2.config.maxActiveRuns} at most at once. Follow with \`${again}\` or \`l2flow status\``);
    return 0;
  }

  const controller = new AbortController();
  let interrupts = 0;
  const onInt = () => {
    // A second Ctrl-C leaves at once; the runs are not ours to stop either way.
    if (++interrupts > 1) process.exit(130);
    controller.abort();
  };
  process.on('SIGINT', onInt);
  let result: FollowResult;
  try {
    io.out(`following ${dates.length} run${dates.length === 1 ? '' : 's'} (executed by \`l2flow run\`, ${l2.config.maxActiveRuns} at most at once); Ctrl-C stops following, not the runs`);
    result = await followBackfill({ l2, from, to, io, signal: controller.signal });
  } finally {
    process.off('SIGINT', onInt);
  }
  if (result.interrupted) {
    io.err(`stopped following; the runs go on. Follow again with \`${again}\` (it creates nothing new) or see \`l2flow status\``);
    return 130;
  }
  for (const [date, b] of result.blocked) {
    io.out(`${date}  blocked    waits in wait_for_success_end for ${b.on}, which ${b.status === 'missing' ? 'has no run' : b.status}`);
  }
  const problems = result.failed.length + result.blocked.size;
  io.out(
    `backfill ${from} … ${to}: ${result.succeeded} succeeded, ${result.failed.length} failed or cancelled, ${result.blocked.size} blocked, ` +
      `of ${result.total} in ${formatDuration(result.elapsedMs)}`,
  );
  if (problems === 0) return 0;
  const firstBad = [...result.failed.map((r) => r.logical_date), ...[...result.blocked.values()].map((b) => b.on)].sort()[0]!;
  io.err(`see \`l2flow status --date ${firstBad}\`; once that date has succeeded, the dates after it go on by themselves`);
  return 1;
}

/** The first date waits for its predecessor's success: say so when that run is missing or cannot succeed. */
async function warnAboutPredecessor(l2: L2flow, from: string, io: Out): Promise<void> {
  const previous = addDays(from, -l2.config.successEndSensor.executionDeltaDays);
  if (previous < l2.config.startDate) return;
  const [run] = await l2.runsBetween(previous, previous);
  if (run?.status === 'success' || run?.status === 'running' || run?.status === 'queued') return;
  const state = run ? `is ${run.status}` : 'has no run';
  io.err(`note: ${from} waits (wait_for_success_end) for a successful run of ${previous}, which ${state}: backfill from ${previous}, or run that date first`);
}
