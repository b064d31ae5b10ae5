import { L2flowError, type L2flow } from './api.js';
import { parseFlags, UsageError } from './args.js';
import { parseDate, type Out } from './cli-io.js';

/** `l2flow clear` and `l2flow mark`. */

export const CLEAR_USAGE = `  clear --date D [--to D2] [--from-step STEP] [--dry-run] [--reason TEXT]
                               re-run finished runs from a step (default: the failed step) as a new attempt
  mark --date D --success|--failed [--reason TEXT]
                               set a run's outcome by hand (a running run is stopped)`;

/** Refusals of the run itself are failures (exit 1); a step name that does not exist is bad usage (exit 2). */
function asCliError(err: unknown): never {
  if (err instanceof L2flowError && (err.code === 'BAD_STEP' || err.code === 'INVALID_DATE')) throw new UsageError(err.message);
  throw err;
}

/** `l2flow clear`; resolves to the exit code. */
export async function cmdClear(l2: L2flow, args: string[], io: Out): Promise<number> {
  const f = parseFlags('clear', args, [
    { name: 'date', type: 'string', description: 'the (first) logical date, YYYY-MM-DD' },
    { name: 'to', type: 'string', description: 'the last logical date of a range, YYYY-MM-DD' },
    { name: 'from-step', type: 'string', description: 'the step to re-run from' },
    { name: 'dry-run', type: 'boolean', description: 'only print what would re-run' },
    { name: 'reason', type: 'string', description: 'why, for the audit trail' },
  ]);
  if (f.date === undefined) throw new UsageError('clear: --date is required, e.g. l2flow clear --date 2024-03-15 [--to 2024-03-20]');
  const dryRun = f['dry-run'] === true;
  const cleared = await l2
    .clear({
      from: parseDate('date', f.date as string),
      ...(f.to === undefined ? {} : { to: parseDate('to', f.to as string) }),
      ...(f['from-step'] === undefined ? {} : { fromStep: f['from-step'] as string }),
      dryRun,
      ...(f.reason === undefined ? {} : { reason: f.reason as string }),
    })
    .catch(asCliError);
  for (const c of cleared) {
    io.out(
      `${dryRun ? 'would clear' : 'cleared'} ${c.runId} (${c.status}): attempt ${c.attempt} from ${c.plan.fromStep}; re-runs ${c.plan.rerun.join(', ')}`,
    );
  }
  if (dryRun) io.out('dry run: nothing was changed');
  return 0;
}

/** `l2flow mark`; resolves to the exit code. */
export async function cmdMark(l2: L2flow, args: string[], io: Out): Promise<number> {
  const f = parseFlags('mark', args, [
    { name: 'date', type: 'string', description: 'the logical date, YYYY-MM-DD' },
    { name: 'success', type: 'boolean', description: 'mark the run successful' },
    { name: 'failed', type: 'boolean', description: 'mark the run failed' },
    { name: 'reason', type: 'string', description: 'why, for the audit trail' },
  ]);
  if (f.date === undefined) throw new UsageError('mark: --date is required, e.g. l2flow mark --date 2024-03-15 --success');
  if ((f.success === true) === (f.failed === true)) throw new UsageError('mark: give exactly one of --success and --failed');
  const status = f.success === true ? 'success' : 'failed';
  const date = parseDate('date', f.date as string);
  const r = await l2.mark(date, status, f.reason === undefined ? {} : { reason: f.reason as string });
  if (!r.changed) {
    io.err(`the run for ${date} (${r.runId}) is already ${status}: nothing to mark`);
    return 1;
  }
  io.out(`marked ${r.runId} ${status} (was ${r.was})`);
  return 0;
}

