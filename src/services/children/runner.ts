import type pg from 'pg';
import { StepError, throwIfAborted } from '../../lib/errors.js';
import { abortableSleep } from '../../lib/time.js';
import { ASYNC_COMMIT, commitWithMemo, isAlreadyRecorded, isMemoConflict, ownerOf, placeholdersIn, prepared, readMemo, recordedOutput, separateState, writeMemo, type DedicatedConnections } from '../db/index.js';
import type { Logger, StepContext, StepFn } from '../types.js';
import { createAirflowChild, type AirflowChildConfig, type AirflowOutcome } from './airflow/child.js';
import { parseAirflowConnection } from './airflow/connection.js';

/** How a child workflow runs: SQL in the warehouse, a native builtin, or a DAG in Airflow. */
export type ChildConfig =
  | { kind: 'sql'; statement: string; timeoutMs?: number; transactional: boolean }
  | { kind: 'builtin'; name: 'sys_kill_all_session_pg'; idleSeconds: number; timeoutMs?: number }
  | AirflowChildConfig;

/** The children that run on a warehouse connection. */
type WarehouseChild = Exclude<ChildConfig, { kind: 'airflow' }>;

export interface ChildResult {
  child: string;
  kind: ChildConfig['kind'];
  durationMs: number;
  rowCount?: number;
  terminated?: number;
  /** Airflow children: the DAG, its run and the state it ended in. */
  dagId?: AirflowOutcome['dagId'];
  dagRunId?: AirflowOutcome['dagRunId'];
  state?: AirflowOutcome['state'];
  /** True when the result was recorded by an earlier invocation and nothing ran now. */
  resumed: boolean;
}

export interface ChildRunner {
  run(childName: string): StepFn<StepContext, ChildResult>;
}

// Stale sessions only: idle ones of ordinary roles in this database, never ours, l2flow's, superusers' or replication's.
// Materialized so every filter is applied before pg_terminate_backend sees a row: the planner may otherwise
// evaluate quals in any order, and a superuser caller could terminate a superuser's session.
const STALE_SESSIONS = `stale as materialized (
    select a.pid, a.usename, a.application_name
      from pg_stat_activity a
      join pg_roles r on r.oid = a.usesysid
     where a.datname = current_database()
       and a.backend_type = 'client backend'
       and a.state = 'idle'
       and a.state_change < now() - make_interval(secs => $1)
       and a.pid <> pg_backend_pid()
       and coalesce(a.application_name, '') not like 'l2flow%'
       and not r.rolsuper and not r.rolreplication`;
const KILL_IDLE_SESSIONS = `with ${STALE_SESSIONS})
  select pid, usename, application_name from stale where pg_terminate_backend(pid)`;
// One database: ONE statement looks for the builtin's memo ($2 run, $3 step, $4 attempt), terminates the stale
// sessions unless it exists, and records the memo ($6 the child's name) with the count: the recorded output comes
// back as the row with `recorded` set, the memo written now as the row with `written` set. Terminations are not
// transactional: a statement that fails after them (its memo insert meeting another invocation's) is at least once.
// $5 the owner asserted (sql/008): a process whose run was taken over terminates nothing. The memo commits
// asynchronously (ASYNC_COMMIT): a crash that loses it runs the killer again, as for a crash before it.
const KILL_IDLE_SESSIONS_RECORDED = `with recorded as materialized (
    select output from l2flow.step_memo where run_id = $2::text and step = $3::text and attempt = $4::integer
       and l2flow.assert_owner($2::text, $5::text)),
  ${STALE_SESSIONS}
       and not exists (select 1 from recorded)),
  killed as materialized (select pid, usename, application_name from stale where pg_terminate_backend(pid)),
  written as (
    insert into l2flow.step_memo (run_id, step, attempt, output)
    select $2::text, $3::text, $4::integer, jsonb_build_object('child', $6::text, 'kind', 'builtin',
             'durationMs', round(extract(epoch from clock_timestamp() - statement_timestamp()) * 1000)::int,
             'terminated', (select count(*) from killed)::int, 'resumed', false)
     where not exists (select 1 from recorded) and ${ASYNC_COMMIT} is not null
    returning output)
  select pid, usename, application_name, null::jsonb as recorded, null::jsonb as written from killed
  union all select null, null, null, output, null from recorded
  union all select null, null, null, null, output from written`;

const CANCEL_GRACE_MS = 5_000;

/** Runs child workflows from configuration, once per run attempt, cancelling their queries on the server on abort/timeout. */
export function createChildRunner(opts: {
  /** l2flow's own tables: memos, airflow claims. */
  pool: pg.Pool;
  /** The warehouse, where children run: cancelling a child's statement from outside its session. The same pool object when l2flow's tables live there. */
  dwh: pg.Pool;
  /** Where each child statement gets a connection of its own. */
  connections: DedicatedConnections;
  children: Record<string, ChildConfig>;
  /** The URI of every connection id an airflow child names (secrets: never logged). */
  airflowConnections?: Record<string, string>;
  logger: Logger;
}): ChildRunner {
  const { pool, connections, children, logger } = opts;
  const db = { state: pool, dwh: opts.dwh };
  const separate = separateState(db);
  const airflow = new Map<string, (ctx: StepContext, signal: AbortSignal) => Promise<AirflowOutcome>>();
  for (const [child, cfg] of Object.entries(children)) {
    if (cfg.kind !== 'airflow') continue;
    const uri = opts.airflowConnections?.[cfg.connection];
    if (uri === undefined) throw new Error(`child workflow ${child} names connection "${cfg.connection}", which was not resolved: load it with loadConfig`);
    const endpoint = parseAirflowConnection(uri, cfg.connection, cfg.apiVersion);
    airflow.set(child, createAirflowChild({ pool, logger, child, cfg, endpoint }));
  }

  /** Run an airflow child and record its result; like a non-transactional child, a crash before the memo runs it again (re-attaching). */
  async function runAirflow(child: string, ctx: StepContext, signal: AbortSignal): Promise<ChildResult> {
    const started = Date.now();
    const outcome = await airflow.get(child)!(ctx, signal);
    const result: ChildResult = { child, kind: 'airflow', durationMs: Date.now() - started, ...outcome, resumed: false };
    if (await writeMemo(pool, ctx, memoStep(child), result)) return result;
    return { ...((await readMemo<ChildResult>(pool, ctx, memoStep(child))) ?? result), resumed: true };
  }

  /**
   * Run `query` on `client`; on abort or timeout cancel it with pg_cancel_backend from another connection and
   * wait for the client to settle. Returns the result, or throws ABORTED / CHILD_TIMEOUT / CHILD_FAILED.
   */
  async function cancellable(
    child: string,
    client: pg.ClientBase,
    pid: number,
    query: pg.QueryConfig,
    timeoutMs: number | undefined,
    signal: AbortSignal,
  ): Promise<pg.QueryResult> {
    throwIfAborted(signal, `child workflow ${child}`); // an already-fired signal never calls its listeners
    const running = client.query(query);
    const settled = running.then(() => undefined, () => undefined);
    let reason: 'abort' | 'timeout' | undefined;
    let timer: NodeJS.Timeout | undefined;
    const stop = new Promise<void>((resolve) => {
      const onAbort = () => { reason ??= 'abort'; resolve(); };
      signal.addEventListener('abort', onAbort, { once: true });
      if (timeoutMs !== undefined) timer = setTimeout(() => { reason ??= 'timeout'; resolve(); }, timeoutMs);
      void settled.then(() => { signal.removeEventListener('abort', onAbort); resolve(); });
    });
    await stop;
    clearTimeout(timer);
    if (reason) {
      await db.dwh.query('select pg_cancel_backend($1)', [pid]).catch((err: unknown) => {
        logger.error({ err, child, pid }, 'could not cancel the child query');
      });
      const gone = await Promise.race([settled.then(() => true), abortableSleep(CANCEL_GRACE_MS).then(() => false)]);
      if (!gone) {
        // A cancel can miss (e.g. arrive between statements); do not leave the work running behind our back.
        logger.warn({ child, pid }, 'child query ignored the cancel; terminating its backend');
        await db.dwh.query('select pg_terminate_backend($1)', [pid]).catch(() => undefined);
        await settled;
      }
      const what = reason === 'timeout' ? 'timed out' : 'was cancelled';
      const after = reason === 'timeout' ? ` after ${(timeoutMs! / 1000).toFixed(1)}s` : '';
      throw new StepError(reason === 'timeout' ? 'CHILD_TIMEOUT' : 'ABORTED',
        `child workflow ${child} ${what}: its query was cancelled on the server${after}`,
        reason === 'abort' ? { cause: signal.reason } : { retryable: true });
    }
    try {
      return await running;
    } catch (err) {
      throw childFailed(child, err);
    }
  }

  /**
   * Run one child on a dedicated client; a transactional child commits its memo in its own transaction.
   * `checkMemo` (one database): the memo is looked for on the child's connection, not before: a transactional
   * child's in the round trip of its BEGIN (and written in its COMMIT's), the session killer's in its own statement.
   * A memo found: resumed, nothing runs.
   */
  async function runOnClient(
    child: string,
    cfg: WarehouseChild,
    ctx: StepContext,
    signal: AbortSignal,
    checkMemo: boolean,
  ): Promise<ChildResult> {
    const started = Date.now();
    const conn = await connections.acquire(signal, `child workflow ${child}`);
    const { client, pid } = conn;
    const step = memoStep(child);
    try {
      const transactional = cfg.kind === 'sql' && cfg.transactional;
      const query: pg.QueryConfig = cfg.kind === 'sql' ? sqlQuery(cfg.statement, ctx)
        : checkMemo ? { ...prepared('l2flow_kill_idle_recorded', KILL_IDLE_SESSIONS_RECORDED), values: [cfg.idleSeconds, ctx.runId, step, ctx.attempt, ownerOf(ctx), child] }
        : { ...prepared('l2flow_kill_idle', KILL_IDLE_SESSIONS), values: [cfg.idleSeconds] };
      /** The session killer's memo, found by its statement, or written by it. */
      let recorded: ChildResult | undefined;
      let written: ChildResult | undefined;
      // Without a transaction (procedures that COMMIT inside, or terminating sessions) a crash between the
      // statement and its memo re-runs the child: at-least-once for those, exactly-once for transactional ones.
      const work = async () => {
        const res = await cancellable(child, client, pid, query, cfg.timeoutMs, signal);
        const result: ChildResult = { child, kind: cfg.kind, durationMs: Date.now() - started, resumed: false };
        if (cfg.kind === 'sql') result.rowCount = res.rowCount ?? 0;
        else {
          type Row = { pid: number; usename: string; application_name: string; recorded?: ChildResult | null; written?: ChildResult | null };
          const rows = res.rows as Row[];
          recorded = rows.find((r) => r.recorded)?.recorded ?? undefined;
          written = rows.find((r) => r.written)?.written ?? undefined;
          const sessions = rows.filter((r) => !r.recorded && !r.written).map((r) => ({ pid: r.pid, user: r.usename, application: r.application_name }));
          result.terminated = sessions.length;
          if (!recorded) logger.info({ child, runId: ctx.runId, sessions }, `terminated ${result.terminated} idle session(s)`);
        }
        return result;
      };
      if (checkMemo && !transactional) {
        // The session killer: its statement recorded its memo, or found it.
        let output: ChildResult;
        try {
          const result = await work();
          output = recorded ? { ...recorded, resumed: true } : (written ?? result);
        } catch (err) {
          // Another invocation recorded it meanwhile (our memo insert met theirs): theirs is the result.
          if (!isMemoConflict((err as { cause?: unknown }).cause)) throw err;
          const winner = await readMemo<ChildResult>(client, ctx, step);
          if (!winner) throw err;
          output = { ...winner, resumed: true };
        }
        conn.release();
        return output;
      }
      if (checkMemo) {
        const output = await inTransactionWithMemo(client, ctx, step, work, () =>
          logger.info({ child, runId: ctx.runId, kind: cfg.kind }, 'child workflow starting'));
        conn.release();
        return output;
      }
      logger.info({ child, runId: ctx.runId, kind: cfg.kind }, 'child workflow starting');
      // Another invocation recorded the child first: ours is rolled back and theirs is the result.
      const { output: result, fresh } = transactional
        ? await commitWithMemo(db, client, ctx, step, work)
        : await work().then(async (r) => ({ output: r, fresh: await writeMemo(separate ? pool : client, ctx, step, r) }));
      const winner = fresh ? undefined : separate ? await recordedOutput<ChildResult>(db, ctx, step, { signal }) : await readMemo<ChildResult>(client, ctx, step);
      if (!fresh && winner === undefined && transactional && separate) {
        // Ours was rolled back for another invocation's intent, whose transaction then aborted too: nothing committed.
        throw new StepError('CHILD_FAILED', `child workflow ${child} of run ${ctx.runId} (${ctx.logicalDate}) was run at the same time ` +
          'by another l2flow process whose warehouse transaction aborted; neither committed: clear the step to run it again', { retryable: true });
      }
      const output = fresh ? result : { ...(winner ?? result), resumed: true };
      conn.release();
      return output;
    } catch (err) {
      // After a failure the connection is closed: an open transaction or a cancelled statement ends with it.
      conn.release(err);
      throw err;
    }
  }

  /**
   * One database, a transactional child, in two round trips: `begin` with its guard (sql/009: no memo yet, and the run
   * still ours) and the child's statement are sent together (the connection pipelines), the memo insert and `commit`
   * follow (simple queries: the key and output are literals quoted by pg). A memo found by the guard aborts the
   * transaction before the statement runs (PostgreSQL refuses it: 25P02): nothing ran, the recorded output is the
   * result (resumed). The memo insert has no `on conflict`: when another invocation recorded the child meanwhile, it
   * fails on the memo's key, ours is rolled back, and theirs is the result.
   */
  async function inTransactionWithMemo(
    client: pg.ClientBase,
    ctx: StepContext,
    step: string,
    work: () => Promise<ChildResult>,
    starting: () => void,
  ): Promise<ChildResult> {
    const lit = (v: string) => client.escapeLiteral(v);
    if (!Number.isSafeInteger(ctx.attempt)) throw new StepError('INTERNAL', `run ${ctx.runId}: attempt ${String(ctx.attempt)} is not an integer`);
    // The owner is asserted (sql/008) before the child runs, by the guard, and again by the memo insert, in its transaction.
    const owner = ctx.owner === undefined ? 'null' : lit(ctx.owner);
    const fence = `l2flow.assert_owner(${lit(ctx.runId)}, ${owner})`;
    let guardError: unknown;
    const guarded = client.query(`begin; select l2flow.assert_unrecorded(${lit(ctx.runId)}, ${lit(step)}, ${ctx.attempt}, ${owner})`)
      .then(() => undefined, (err: unknown) => void (guardError = err));
    starting();
    let result: ChildResult;
    try {
      result = await work(); // sent behind the guard, without waiting for its answer
    } catch (err) {
      await guarded;
      if (!guardError) throw err;
      if (!isAlreadyRecorded(guardError)) throw guardError; // not the owner, or the connection failed
      await client.query('rollback');
      const recorded = await readMemo<ChildResult>(client, ctx, step);
      if (recorded === undefined) throw guardError;
      logger.info({ step, runId: ctx.runId }, 'child workflow already recorded by an earlier invocation: not run again');
      return { ...recorded, resumed: true };
    }
    // The statement ran, so the guard passed (a refused guard aborts the transaction and the statement with it).
    try {
      await client.query(`insert into l2flow.step_memo (run_id, step, attempt, output)
        select ${lit(ctx.runId)}, ${lit(step)}, ${ctx.attempt}, ${lit(JSON.stringify(result))}::jsonb where ${fence}; commit`);
      return result;
    } catch (err) {
      if (!isMemoConflict(err)) throw err;
    }
    await client.query('rollback');
    const winner = await readMemo<ChildResult>(client, ctx, step);
    return { ...(winner ?? result), resumed: true };
  }

  return {
    run(childName) {
      return async (ctx, signal) => {
        const cfg = children[childName];
        if (!cfg) {
          throw new StepError('CHILD_NOT_CONFIGURED',
            `child workflow ${childName} is not configured: add children.${childName} ` +
            `({ kind: 'sql', statement: 'CALL …' }, { kind: 'airflow', dagId, connection } or a builtin) to the l2flow config`);
        }
        throwIfAborted(signal, `child workflow ${childName}`);
        // One database, a transactional child or the session killer: the memo is looked for on the child's connection
        // in a round trip it makes anyway (see runOnClient).
        const checkMemo = !separate && (cfg.kind === 'builtin' || (cfg.kind === 'sql' && cfg.transactional));
        const recorded = checkMemo ? undefined : await recordedOutput<ChildResult>(db, ctx, memoStep(childName), { signal });
        if (!recorded && cfg.kind === 'airflow') logger.info({ child: childName, runId: ctx.runId, kind: cfg.kind }, 'child workflow starting');
        const result = recorded ? { ...recorded, resumed: true }
          : cfg.kind === 'airflow' ? await runAirflow(childName, ctx, signal) : await runOnClient(childName, cfg, ctx, signal, checkMemo);
        if (result.resumed) {
          logger.info({ child: childName, runId: ctx.runId }, 'child already completed in this attempt; not run again');
          return result;
        }
        logger.info({ child: childName, runId: ctx.runId, durationMs: result.durationMs }, 'child workflow finished');
        return result;
      };
    },
  };
}

function memoStep(child: string): string {
  return `child:${child}`;
}

/** Bind $1 = logical date and $2 = load id, passing only the ones the statement uses. */
function sqlQuery(statement: string, ctx: StepContext): pg.QueryConfig {
  const used = new Set(placeholdersIn(statement));
  if (used.has(2) && !used.has(1)) {
    // PostgreSQL cannot type a parameter the text never mentions, so $2 alone becomes $1.
    return { text: statement.replace(/\$2(?!\d)/g, '$$1'), values: [ctx.loadId] };
  }
  if (used.has(2)) return { text: statement, values: [ctx.logicalDate, ctx.loadId] };
  if (used.has(1)) return { text: statement, values: [ctx.logicalDate] };
  return { text: statement };
}

function childFailed(child: string, err: unknown): StepError {
  const e = err as { code?: unknown; message?: unknown; detail?: unknown };
  const sqlstate = typeof e.code === 'string' ? e.code : undefined;
  const detail = typeof e.detail === 'string' ? ` (${e.detail})` : '';
  return new StepError('CHILD_FAILED',
    `child workflow ${child} failed: SQLSTATE ${sqlstate ?? 'unknown'}: ${String(e.message)}${detail}`,
    { cause: err, details: sqlstate ? { sqlstate } : undefined });
}
