import type pg from 'pg';
import { StepError } from '../../lib/errors.js';
import { retry, type RetryPolicy } from '../../lib/retry.js';
import { checkout, inTransaction, prepared } from './sql.js';
import type { StepContext } from '../types.js';

/** Anything that can run a query: a pool or a client. */
export type Queryable = Pick<pg.Pool, 'query'> | Pick<pg.PoolClient, 'query'>;

/**
 * The two databases l2flow talks to: the warehouse (md tables, the flag table, the SAP view, children's SQL) and
 * its own state (schema l2flow, advisory locks). When l2flow's tables live in the warehouse both are ONE pool object.
 */
export interface Databases {
  state: pg.Pool;
  dwh: pg.Pool;
}

/** True when l2flow's tables live in a database of their own: a warehouse write and its memo cannot share a transaction. */
export function separateState(db: Databases): boolean {
  return db.state !== db.dwh;
}

type MemoKey = Pick<StepContext, 'runId' | 'attempt' | 'owner'>;

/** The owner a memo or intent write asserts (see sql/008_owner_fence.sql): null asserts nothing. */
export const ownerOf = (ctx: { owner?: string | undefined }): string | null => ctx.owner ?? null;

/** How an intent whose warehouse transaction is still in progress is waited for. */
export interface IntentWait {
  /** Default INTENT_WAIT (up to 60 s). */
  wait?: RetryPolicy;
  /** Ends the wait with ABORTED (the step was left). */
  signal?: AbortSignal;
}

/**
 * The recorded output of `step` for this run attempt, or undefined when the step has not completed. The owner is
 * asserted here too: a process whose run was taken over is refused before it starts a step's work (a child that
 * commits by itself, an Airflow DAG run), not only when it records it.
 */
export async function readMemo<O>(db: Queryable, ctx: MemoKey, step: string): Promise<O | undefined> {
  const { rows } = await db.query<{ output: O }>({
    name: 'l2flow_memo_read',
    text: 'select output from l2flow.step_memo where run_id = $1 and step = $2 and attempt = $3 and l2flow.assert_owner($1, $4)',
    values: [ctx.runId, step, ctx.attempt, ownerOf(ctx)],
  });
  return rows[0]?.output;
}

/**
 * Record `output` for `step`, in the caller's transaction; false when a memo already existed (someone else finished
 * first). Refused (SQLSTATE L2F01, see notOwnerError) when `ctx.owner` no longer owns the run.
 */
export async function writeMemo(client: Queryable, ctx: MemoKey, step: string, output: unknown): Promise<boolean> {
  const { rowCount } = await client.query({
    name: 'l2flow_memo_write',
    text: `insert into l2flow.step_memo (run_id, step, attempt, output)
           select $1, $2, $3, $4::jsonb where l2flow.assert_owner($1, $5)
           on conflict (run_id, step, attempt) do nothing returning 1`,
    values: [ctx.runId, step, ctx.attempt, JSON.stringify(output ?? {}), ownerOf(ctx)],
  });
  return rowCount === 1;
}

/*
 * Exactly once across two databases (state ≠ warehouse). The warehouse transaction cannot also commit the memo, so:
 *   1. inside the warehouse transaction, after the work: txid_current();
 *   2. an INTENT row (run, step, attempt, that xid, the output) is committed in the state database;
 *   3. the warehouse transaction commits;
 *   4. the intent becomes the memo (one statement: insert the memo, delete the intent).
 * Whoever finds an intent without a memo asks the warehouse txid_status(xid): committed → the work is done, the
 * intent's output becomes the memo; aborted (or unknown: older than the warehouse's commit-log horizon) → the intent
 * is deleted and the work runs again; in progress → its session is still alive: wait, bounded.
 */

/** How long an intent whose warehouse transaction is still in progress is waited for, and how often it is asked. */
export const INTENT_WAIT: RetryPolicy = { maxTries: Infinity, baseDelayMs: 100, maxDelayMs: 2_000, jitter: 'none', maxElapsedMs: 60_000 };

const INTENT_SQL = {
  write: `insert into l2flow.step_intent (run_id, step, attempt, dwh_xid, output)
          select $1, $2, $3, $4, $5::jsonb where l2flow.assert_owner($1, $6)
          on conflict (run_id, step, attempt) do nothing returning 1`,
  // The memo, else the intent: one round trip.
  read: `select m.output as memo, i.dwh_xid::text as xid, i.output
           from (select) k
           left join l2flow.step_memo m on m.run_id = $1 and m.step = $2 and m.attempt = $3
           left join l2flow.step_intent i on i.run_id = $1 and i.step = $2 and i.attempt = $3
          where l2flow.assert_owner($1, $4)`,
  // One statement: the memo appears exactly when the intent goes.
  settle: `with gone as (delete from l2flow.step_intent where run_id = $1 and step = $2 and attempt = $3)
           insert into l2flow.step_memo (run_id, step, attempt, output) values ($1, $2, $3, $4::jsonb)
           on conflict (run_id, step, attempt) do nothing returning 1`,
  drop: 'delete from l2flow.step_intent where run_id = $1 and step = $2 and attempt = $3 and dwh_xid = $4',
};

/** Turn a committed intent into the memo. */
async function settleIntent(state: Queryable, ctx: MemoKey, step: string, output: unknown): Promise<void> {
  await state.query({ name: 'l2flow_intent_settle', text: INTENT_SQL.settle, values: [ctx.runId, step, ctx.attempt, JSON.stringify(output ?? {})] });
}

/**
 * The recorded output of `step`: its memo, or (state ≠ warehouse) the output of an intent whose warehouse transaction
 * committed, made the memo now. An intent whose transaction aborted is deleted (undefined: run the step). One
 * still in progress is waited for up to `wait.maxElapsedMs`, then a retryable DB_ERROR names the transaction.
 */
export async function recordedOutput<O>(db: Databases, ctx: MemoKey, step: string, opts: IntentWait = {}): Promise<O | undefined> {
  if (!separateState(db)) return readMemo<O>(db.state, ctx, step);
  const { rows } = await db.state.query<{ memo: O | null; xid: string | null; output: O }>({
    name: 'l2flow_memo_intent_read', text: INTENT_SQL.read, values: [ctx.runId, step, ctx.attempt, ownerOf(ctx)] });
  const found = rows[0]!;
  if (found.memo !== null) return found.memo;
  if (found.xid === null) return undefined;
  const intent = { xid: found.xid, output: found.output };
  const status = await retry(async () => {
    const { rows: s } = await db.dwh.query<{ status: string | null }>('select txid_status($1::bigint) as status', [intent.xid]);
    const answer = s[0]?.status ?? null;
    if (answer === 'in progress') {
      throw new StepError('DB_ERROR',
        `${step} of run ${ctx.runId}: its warehouse transaction (xid ${intent.xid}) is still in progress, so whether its ` +
        `writes committed is not known yet; find its session (select pid from pg_stat_activity where backend_xid::text::bigint = ${intent.xid} % 4294967296) ` +
        'and let it finish or terminate it, then clear the step', { retryable: true, details: { xid: intent.xid } });
    }
    return answer;
  }, opts.wait ?? INTENT_WAIT, { what: `${step} of run ${ctx.runId}`, ...(opts.signal ? { signal: opts.signal } : {}) });
  if (status === 'committed') {
    await settleIntent(db.state, ctx, step, intent.output);
    return (await readMemo<O>(db.state, ctx, step)) ?? intent.output;
  }
  // Aborted, or too old for the warehouse's commit log to say: the work is done again.
  await db.state.query({ name: 'l2flow_intent_drop', text: INTENT_SQL.drop, values: [ctx.runId, step, ctx.attempt, intent.xid] });
  return undefined;
}

/**
 * Run `work` in a transaction on `client` (a warehouse connection) and record its output as the memo of `step`:
 * in the same transaction when state and warehouse are one database, else through an intent (see above).
 * `fresh: false` when another invocation recorded the step first (ours was rolled back): read the winner with
 * recordedOutput. Throws (after rolling back) what `work` throws.
 */
export async function commitWithMemo<O>(
  db: Databases,
  client: pg.ClientBase,
  ctx: MemoKey,
  step: string,
  work: () => Promise<O>,
): Promise<{ output: O; fresh: boolean }> {
  if (!separateState(db)) {
    const r = await inTransaction(client, async () => {
      const output = await work();
      return { output, fresh: await writeMemo(client, ctx, step, output) };
    }, (x) => x.fresh);
    return r;
  }
  // The transaction's id is taken with its BEGIN (one round trip, a simple query): the same xid the commit settles.
  let xid: string;
  try {
    const opened = (await client.query('begin; select txid_current()::text as xid')) as unknown as pg.QueryResult<{ xid: string }>[];
    xid = opened[1]!.rows[0]!.xid;
  } catch (err) {
    await client.query('rollback').catch(() => undefined);
    throw err;
  }
  const r = await inTransaction(client, async () => {
    const output = await work();
    // Committed in the state database BEFORE the warehouse commits: a crash after the warehouse commit leaves it behind.
    const { rowCount } = await db.state.query({
      name: 'l2flow_intent_write',
      text: INTENT_SQL.write,
      values: [ctx.runId, step, ctx.attempt, xid, JSON.stringify(output ?? {}), ownerOf(ctx)],
    });
    return { output, fresh: rowCount === 1 };
  }, (x) => x.fresh, { begun: true });
  if (r.fresh) await settleIntent(db.state, ctx, step, r.output);
  return r;
}

/**
 * Run `work` once per (run, step, attempt): its warehouse writes and the memo commit together (or, with a separate
 * state database, through an intent checked against the warehouse's transaction status), and a re-invocation returns
 * the recorded output. If a concurrent invocation committed first, ours is rolled back and theirs wins.
 */
export async function memoized<O>(
  db: Databases,
  ctx: MemoKey,
  step: string,
  work: (client: pg.PoolClient) => Promise<O>,
  opts: IntentWait = {},
): Promise<{ output: O; resumed: boolean }> {
  // Twice at most: a concurrent invocation's intent whose transaction then aborted leaves the step to us.
  for (let round = 0; round < 2; round++) {
    const recorded = await recordedOutput<O>(db, ctx, step, opts);
    if (recorded !== undefined) return { output: recorded, resumed: true };
    const c = await checkout(db.dwh);
    let attempt: { output: O; fresh: boolean };
    try {
      attempt = await commitWithMemo(db, c.client, ctx, step, () => work(c.client));
      c.release();
    } catch (err) {
      c.release(err);
      throw err;
    }
    if (attempt.fresh) return { output: attempt.output, resumed: false };
  }
  const winner = await recordedOutput<O>(db, ctx, step, opts);
  if (winner === undefined) throw new Error(`step memo ${step} of run ${ctx.runId} vanished after a conflict`);
  return { output: winner, resumed: true };
}

/**
 * A step whose warehouse writes fit in one statement: top-level data-modifying CTEs (`a as (…), b as (…)`, using
 * $1…$n of `values`) and a jsonb expression of the step's output (it may read the CTEs' RETURNING rows).
 * Data-modifying CTEs all see the statement's snapshot and not each other's rows except through RETURNING.
 * Every write must be guarded by `not exists (select 1 from ${RECORDED})`: the step's memo as the statement's
 * snapshot sees it, so a recorded step writes nothing.
 */
export interface StepStatement {
  /** Names the prepared statement (a hash of the text is added): the text may differ by configuration. */
  name: string;
  writes: string;
  output: string;
  values: unknown[];
}

/** The CTE a StepStatement's writes are guarded by (see StepStatement). */
export const RECORDED = 'l2flow_recorded';


/**
 * True for the refusal of l2flow.assert_unrecorded (sql/009, SQLSTATE L2F02): the step already has its memo for this
 * attempt, so the statement sent behind the guard did not run.
 */
export function isAlreadyRecorded(err: unknown): boolean {
  return (err as { code?: unknown } | undefined)?.code === 'L2F02';
}

/** True for the unique violation of a memo that already exists. */
export function isMemoConflict(err: unknown): boolean {
  const e = err as { code?: unknown; table?: unknown; schema?: unknown };
  return e.code === '23505' && e.table === 'step_memo' && e.schema === 'l2flow';
}

/**
 * `memoized` for a step that is one statement. With one database the memo look, the writes and the memo insert are
 * ONE statement (one round trip, its own implicit transaction): a memo the statement's snapshot sees makes every
 * write a no-op and comes back as the output (resumed). A memo committed by a concurrent invocation after our
 * snapshot: the memo insert (no `on conflict`) waits for it and fails on step_memo's key, every write of ours is
 * rolled back, and the recorded output is read. With a separate state database the statement is the work of
 * `memoized` (intent, transaction status), its guard an empty memo.
 */
export async function memoizedStatement<O>(db: Databases, ctx: MemoKey, step: string, stmt: StepStatement, opts: IntentWait = {}): Promise<{ output: O; resumed: boolean }> {
  if (separateState(db)) {
    const text = `with ${RECORDED} as (select null::jsonb as output where false), ${stmt.writes} select ${stmt.output} as output`;
    const named = prepared(stmt.name, text);
    return memoized<O>(db, ctx, step, async (client) => (await client.query<{ output: O }>({ ...named, values: stmt.values })).rows[0]!.output, opts);
  }
  const n = stmt.values.length;
  const key = `run_id = $${n + 1}::text and step = $${n + 2}::text and attempt = $${n + 3}::integer`;
  // The owner is asserted by the memo insert: refused, the whole statement (every md write) is rolled back.
  const text = `with ${RECORDED} as (select output from l2flow.step_memo where ${key}),
    ${stmt.writes},
    l2flow_memo as (insert into l2flow.step_memo (run_id, step, attempt, output)
                    select $${n + 1}::text, $${n + 2}::text, $${n + 3}::integer, ${stmt.output}
                     where not exists (select 1 from ${RECORDED}) and l2flow.assert_owner($${n + 1}::text, $${n + 4}::text) returning output)
    select output, false as resumed from l2flow_memo union all select output, true from ${RECORDED}`;
  const named = prepared(stmt.name, text);
  // Twice at most: a memo found by the insert but gone by the read (cleared meanwhile) lets the step run again.
  for (let round = 0; round < 2; round++) {
    try {
      const { rows } = await db.dwh.query<{ output: O; resumed: boolean }>({ ...named, values: [...stmt.values, ctx.runId, step, ctx.attempt, ownerOf(ctx)] });
      return rows[0]!;
    } catch (err) {
      if (!isMemoConflict(err)) throw err;
    }
    const recorded = await readMemo<O>(db.state, ctx, step);
    if (recorded !== undefined) return { output: recorded, resumed: true };
  }
  throw new Error(`step memo ${step} of run ${ctx.runId} was found then vanished twice; clear the step to run it again`);
}
