import pg from 'pg';
import { Subject, type Observable } from 'rxjs';
import { retry, type RetryPolicy } from '../lib/retry.js';
import { prepared, type HeldLock, type SessionLocks } from '../services/db/index.js';

/**
 * The process's lock connection and every lock it holds: one per executed run, one of the max_active_runs slots
 * per run, the workflow's leader lock, and the slots of Airflow-style pools (`dwh_l2`). They are session advisory
 * locks, so PostgreSQL frees all of them when the connection (or the process) dies; ownership needs no lease or
 * timeout logic. Keeping them all on one connection is what keeps l2flow's connection count flat: a run waiting for
 * a pool slot holds no pooled connection, and nothing holds one connection while it waits for another.
 *
 * When the connection breaks (a network blip, a server restart) the locks are taken again on a new connection
 * within `recoverWithinMs` (15 s): runs whose locks come back keep running, so a step that failed in the same outage fails
 * its run as it would have anyway instead of the whole process dropping its runs. Locks another session took in the
 * gap are reported lost; if the connection does not come back in time, everything is lost.
 */

const RUN_LOCK_SPACE = 727_002;
/** max_active_runs across every process: a run holds one of N slot locks beside its own lock. */
const RUN_SLOT_SPACE = 727_003;
/** One leader per workflow across processes: the only one that may create scheduled runs. */
const LEADER_SPACE = 727_004;

/** Identifies the lock session a lock was taken in; it outlives a connection whose locks were all taken again. */
export type LockEpoch = object;

/** The locks a reconnection could not take again (another session took them in the gap). */
export interface Relocked {
  runs: string[];
  slots: number[];
  leader: boolean;
  /** Pool-slot locks ("namespace:key"). */
  named: string[];
}

export interface RunLocks extends SessionLocks {
  /** Open the lock connection now (it is also opened lazily). */
  connect(): Promise<void>;
  /** The current lock session, or null while there is none. */
  epoch(): LockEpoch | null;
  tryLockRun(runId: string): Promise<boolean>;
  /** Take a free one of the max_active_runs slots shared by every process, or null when all are held. */
  trySlot(): Promise<number | null>;
  /**
   * Lock a run and take a slot for it, in one round trip: `locked` false when another session holds the run;
   * `slot` null when every slot is held (the run's lock is then released again in the same statement).
   */
  tryLockRunWithSlot(runId: string): Promise<{ locked: boolean; slot: number | null }>;
  tryLead(): Promise<boolean>;
  /** Release a run's lock (and its slot) if they were taken in the current session. */
  unlock(runId: string, slot: number | null, takenOn?: LockEpoch | null): Promise<void>;
  /** Emits when the connection broke and could not be re-established in time: every lock is gone. */
  lost$: Observable<Error>;
  /** Emits after the connection was re-established and the locks taken again, with those that could not be. */
  relocked$: Observable<Relocked>;
  /** Close the connection, releasing everything. */
  end(): Promise<void>;
}

/** Reconnecting the lock session: 100 ms, 200 ms, 400 ms … 2 s, for at most `recoverWithinMs`. */
const RECONNECT: Omit<RetryPolicy, 'maxElapsedMs'> = { maxTries: Infinity, baseDelayMs: 100, maxDelayMs: 2_000, jitter: 'none' };

type Lock = { text: string; values: unknown[] };
const lockSql = (fn: 'pg_try_advisory_lock' | 'pg_advisory_unlock', k: Key): Lock =>
  k.kind === 'named'
    ? { text: `select ${fn}(hashtext($1), $2) as ok`, values: [k.namespace, k.key] }
    : k.kind === 'slot'
      ? { text: `select ${fn}($1::int, $2::int) as ok`, values: [RUN_SLOT_SPACE, k.slot] }
      : { text: `select ${fn}($1, hashtext($2)) as ok`, values: [k.kind === 'run' ? RUN_LOCK_SPACE : LEADER_SPACE, k.id] };
type Key = { kind: 'run' | 'leader'; id: string } | { kind: 'slot'; slot: number } | { kind: 'named'; namespace: string; key: number };
const keyOf = (k: Key) => (k.kind === 'named' ? `named:${k.namespace}:${k.key}` : k.kind === 'slot' ? `slot:${k.slot}` : `${k.kind}:${k.id}`);

/** Build the lock session of one process. */
export function createRunLocks(o: {
  connectionString: string;
  maxActiveRuns: number;
  workflowId: string;
  /** How long a broken lock connection may take to come back with its locks (default 15 s); 0: never, lose them at once. */
  recoverWithinMs?: number;
}): RunLocks {
  let client: pg.Client | null = null;
  let session: LockEpoch | null = null;
  let opening: Promise<pg.Client> | null = null;
  let ended = false;
  /** Every lock held now, to take again after a reconnection. */
  const held = new Map<string, Key>();
  const lost = new Subject<Error>();
  const relocked = new Subject<Relocked>();
  /** One statement at a time on the connection: pg would queue them anyway, and warns when asked to. */
  let tail: Promise<unknown> = Promise.resolve();

  async function open(): Promise<pg.Client> {
    const c = new pg.Client({ connectionString: o.connectionString, application_name: 'l2flow-locks' });
    c.on('error', (err) => {
      // pg reports a lost connection twice (the server's FATAL, then the socket's end): act once, and never
      // for a connection that was already replaced.
      if (client !== c) return;
      client = null;
      if (ended) return;
      if (o.recoverWithinMs === 0) return loseAll(err);
      opening = recover(err);
    });
    await c.connect();
    // The server must notice a vanished host (no FIN) to free this process's run locks: without these settings
    // that takes the OS default of two hours and more; with them about 25 s. Unix sockets ignore them.
    await c.query('set tcp_keepalives_idle = 10; set tcp_keepalives_interval = 5; set tcp_keepalives_count = 3');
    client = c;
    session ??= {};
    return c;
  }

  /** Reconnect and take every held lock again; what cannot be is reported, and all of it when time runs out. */
  async function recover(cause: Error): Promise<pg.Client> {
    try {
      const c = await retry(() => open(), { ...RECONNECT, maxElapsedMs: o.recoverWithinMs ?? 15_000 }, {
        what: 'reconnecting the lock connection',
        isRetryable: () => !ended,
      });
      const gone: Relocked = { runs: [], slots: [], leader: false, named: [] };
      for (const [id, k] of [...held]) {
        const { rows } = await c.query<{ ok: boolean }>(lockSql('pg_try_advisory_lock', k));
        if (rows[0]?.ok) continue;
        held.delete(id);
        if (k.kind === 'slot') gone.slots.push(k.slot);
        else if (k.kind === 'named') gone.named.push(`${k.namespace}:${k.key}`);
        else if (k.kind === 'run') gone.runs.push(k.id);
        else gone.leader = true;
      }
      relocked.next(gone);
      return c;
    } catch (err) {
      loseAll(cause);
      throw err;
    } finally {
      opening = null;
    }
  }

  /** Every lock is gone with its session: forget them, and say so. */
  function loseAll(cause: Error): void {
    held.clear();
    session = null;
    lost.next(cause);
  }

  async function current(): Promise<pg.Client> {
    if (client) return client;
    opening ??= open().finally(() => {
      opening = null;
    });
    return opening;
  }

  /**
   * Run one statement on the lock connection (opening it when needed), after every statement queued before it. A
   * function is called when the statement's turn comes, so it sees what every statement before it took.
   */
  function query<R extends pg.QueryResultRow>(sql: Lock | (() => Lock), took?: (rows: R[]) => void): Promise<R[]> {
    const run = tail.then(async () => {
      const c = await current();
      const { text, values } = typeof sql === 'function' ? sql() : sql;
      // Named: the lock statements' texts are fixed, so each is parsed and planned once per lock session.
      const { rows } = await c.query<R>({ ...prepared('l2flow_lock', text), values });
      // Recorded before the next statement's turn: its skip list must include what this one took.
      took?.(rows);
      return rows;
    });
    tail = run.catch(() => undefined);
    return run;
  }

  /** The slots this session holds: a session's advisory locks are re-entrant, so it must not try them again. */
  const heldSlots = () => [...held.values()].flatMap((k) => (k.kind === 'slot' ? [k.slot] : []));

  async function take(k: Key): Promise<boolean> {
    const ok = (await query<{ ok: boolean }>(lockSql('pg_try_advisory_lock', k)))[0]?.ok === true;
    if (ok) held.set(keyOf(k), k);
    return ok;
  }

  async function release(k: Key): Promise<boolean> {
    // Gone with its session: unlocking in a newer one would free someone else's lock.
    if (!held.delete(keyOf(k))) return false;
    const rows = await query<{ ok: boolean }>(lockSql('pg_advisory_unlock', k)).catch(() => null);
    return rows?.[0]?.ok === true;
  }

  /**
   * Take the first slot no session holds, in one statement, without looking at pg_locks (a scan of the server's
   * whole lock table per candidate slot): the slots are tried in order and the scan stops at the first one granted.
   * Slots this session holds are skipped (re-entrant: they would be granted again); advisory locks belong to one
   * database, so runtimes of other databases on the server never count. CASE keeps the skip before the try.
   */
  const slotTry = (space: string, n: string, mine: string, when = 'true') =>
    `select i as slot from generate_series(0, case when ${when} then ${n}::int - 1 else -1 end) i
      where case when i = any(${mine}::int[]) then false else pg_try_advisory_lock(${space}::int, i) end limit 1`;

  async function trySlot(): Promise<number | null> {
    const [row] = await query<{ slot: number }>(
      () => ({ text: slotTry('$1', '$2', '$3'), values: [RUN_SLOT_SPACE, o.maxActiveRuns, heldSlots()] }),
      ([r]) => void (r && held.set(keyOf({ kind: 'slot', slot: r.slot }), { kind: 'slot', slot: r.slot })),
    );
    return row?.slot ?? null;
  }

  return {
    lost$: lost.asObservable(),
    relocked$: relocked.asObservable(),
    async connect() {
      await current();
    },
    epoch: () => session,
    tryLockRun: (runId) => take({ kind: 'run', id: runId }),
    trySlot,
    async tryLockRunWithSlot(runId) {
      const run: Key = { kind: 'run', id: runId };
      // Materialized CTEs run in order: the run's lock, then (only when it was taken) the slots tried in order; when
      // no slot was taken the run's lock is given back before the statement ends.
      const [row] = await query<{ run_ok: boolean; slot: number | null; released: boolean | null }>(() => ({
        text: `with r as materialized (select pg_try_advisory_lock($1, hashtext($2)) as ok),
             t as materialized (${slotTry('$3', '$4', '$5', '(select ok from r)')})
           select r.ok as run_ok, t.slot,
                  case when r.ok and t.slot is null then pg_advisory_unlock($1, hashtext($2)) end as released
             from r left join t on true`,
        values: [RUN_LOCK_SPACE, runId, RUN_SLOT_SPACE, o.maxActiveRuns, heldSlots()],
      }), ([r]) => {
        if (!r?.run_ok || r.slot === null) return;
        held.set(keyOf(run), run);
        held.set(keyOf({ kind: 'slot', slot: r.slot }), { kind: 'slot', slot: r.slot });
      });
      if (!row?.run_ok) return { locked: false, slot: null };
      return { locked: true, slot: row.slot };
    },
    async tryLead() {
      if (!client || held.has(keyOf({ kind: 'leader', id: o.workflowId }))) return false;
      return take({ kind: 'leader', id: o.workflowId });
    },
    async tryLock(namespace, key): Promise<HeldLock | null> {
      const k: Key = { kind: 'named', namespace, key };
      if (!(await take(k))) return null;
      const takenIn = session;
      return { release: async () => takenIn === session && release(k) };
    },
    async unlock(runId, slot, takenOn = session) {
      if (!session || takenOn !== session) return; // the locks died with their session
      const run: Key = { kind: 'run', id: runId };
      const slotKey: Key | null = slot === null ? null : { kind: 'slot', slot };
      if (slotKey && held.has(keyOf(run)) && held.has(keyOf(slotKey))) {
        // Both in one round trip.
        held.delete(keyOf(run));
        held.delete(keyOf(slotKey));
        await query({
          text: 'select pg_advisory_unlock($1, hashtext($2)) as ok, pg_advisory_unlock($3::int, $4::int) as slot_ok',
          values: [RUN_LOCK_SPACE, runId, RUN_SLOT_SPACE, slot],
        }).catch(() => null);
        return;
      }
      await release(run);
      if (slotKey) await release(slotKey);
    },
    async end() {
      ended = true;
      await tail;
      const c = client;
      client = null;
      session = null;
      held.clear();
      await c?.end().catch(() => undefined);
      lost.complete();
      relocked.complete();
    },
  };
}
