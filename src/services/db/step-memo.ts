import type pg from 'pg';
import { withTransaction } from './sql.js';
import type { StepContext } from '../types.js';

/** Anything that can run a query: a pool or a client. */
export type Queryable = Pick<pg.Pool, 'query'> | Pick<pg.PoolClient, 'query'>;

type MemoKey = Pick<StepContext, 'runId' | 'attempt'>;

/** The recorded output of `step` for this run attempt, or undefined when the step has not completed. */
export async function readMemo<O>(db: Queryable, ctx: MemoKey, step: string): Promise<O | undefined> {
  const { rows } = await db.query<{ output: O }>({
    name: 'l2flow_memo_read',
    text: 'select output from l2flow.step_memo where run_id = $1 and step = $2 and attempt = $3',
    values: [ctx.runId, step, ctx.attempt],
  });
  return rows[0]?.output;
}

/** Record `output` for `step`, in the caller's transaction; false when a memo already existed (someone else finished first). */
export async function writeMemo(client: Queryable, ctx: MemoKey, step: string, output: unknown): Promise<boolean> {
  const { rowCount } = await client.query({
    name: 'l2flow_memo_write',
    text: `insert into l2flow.step_memo (run_id, step, attempt, output) values ($1, $2, $3, $4::jsonb)
           on conflict (run_id, step, attempt) do nothing returning 1`,
    values: [ctx.runId, step, ctx.attempt, JSON.stringify(output ?? {})],
  });
  return rowCount === 1;
}

/**
 * Run `work` once per (run, step, attempt): its writes and the memo commit together, and a re-invocation
 * returns the recorded output. If a concurrent invocation committed first, ours is rolled back and theirs wins.
 */
export async function memoized<O>(
  pool: pg.Pool,
  ctx: MemoKey,
  step: string,
  work: (client: pg.PoolClient) => Promise<O>,
): Promise<{ output: O; resumed: boolean }> {
  const recorded = await readMemo<O>(pool, ctx, step);
  if (recorded !== undefined) return { output: recorded, resumed: true };
  const attempt = await withTransaction(pool, async (client) => {
    const output = await work(client);
    return { output, recorded: await writeMemo(client, ctx, step, output) };
  }, (r) => r.recorded);
  if (attempt.recorded) return { output: attempt.output, resumed: false };
  const winner = await readMemo<O>(pool, ctx, step);
  if (winner === undefined) throw new Error(`step memo ${step} of run ${ctx.runId} vanished after a conflict`);
  return { output: winner, resumed: true };
}
