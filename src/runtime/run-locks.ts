import pg from 'pg';
import { Subject, type Observable } from 'rxjs';
import type { SessionLocks } from '../services/db/index.js';

/**
 * The process's lock connection and every lock it holds: one per executed run, one of the max_active_runs slots
 * per run, the workflow's leader lock, and the slots of Airflow-style pools (`dwh_l2`). They are session advisory
 * locks, so PostgreSQL frees all of them when the connection (or the process) dies; ownership needs no lease or
 * timeout logic. Keeping them all on one connection is what keeps l2flow's connection count flat: a run waiting for
 * a pool slot holds no pooled connection, and nothing holds one connection while it waits for another.
 */

const RUN_LOCK_SPACE = 727_002;
/** max_active_runs across every process: a run holds one of N slot locks beside its own lock. */
const RUN_SLOT_SPACE = 727_003;
/** One leader per workflow across processes: the only one that may create scheduled runs. */
const LEADER_SPACE = 727_004;

/** Identifies the connection a lock was taken on: once that connection is gone, so are its locks. */
export type LockEpoch = object;

export interface RunLocks extends SessionLocks {
  /** Open the lock connection now (it is also opened lazily). */
  connect(): Promise<void>;
  /** The current connection's identity, or null while there is none. */
  epoch(): LockEpoch | null;
  tryLockRun(runId: string): Promise<boolean>;
  /** Take a free one of the max_active_runs slots shared by every process, or null when all are held. */
  trySlot(): Promise<number | null>;
  tryLead(): Promise<boolean>;
  /** Release a run's lock (and its slot) if they were taken on the current connection. */
  unlock(runId: string, slot: number | null, takenOn?: LockEpoch | null): Promise<void>;
  /** Emits once per lost connection: every lock taken on it is gone. */
  lost$: Observable<Error>;
  /** Close the connection, releasing everything. */
  end(): Promise<void>;
}

/** Build the lock session of one process. */
export function createRunLocks(o: { connectionString: string; maxActiveRuns: number; workflowId: string }): RunLocks {
  let client: pg.Client | null = null;
  let opening: Promise<pg.Client> | null = null;
  const lost = new Subject<Error>();
  /** One statement at a time on the connection: pg would queue them anyway, and warns when asked to. */
  let tail: Promise<unknown> = Promise.resolve();

  async function open(): Promise<pg.Client> {
    const c = new pg.Client({ connectionString: o.connectionString, application_name: 'l2flow-locks' });
    c.on('error', (err) => {
      // pg reports a lost connection twice (the server's FATAL, then the socket's end): act once, and never
      // for a connection that was already replaced.
      if (client !== c) return;
      client = null;
      lost.next(err);
    });
    await c.connect();
    // The server must notice a vanished host (no FIN) to free this process's run locks: without these settings
    // that takes the OS default of two hours and more; with them about 25 s. Unix sockets ignore them.
    await c.query('set tcp_keepalives_idle = 10; set tcp_keepalives_interval = 5; set tcp_keepalives_count = 3');
    client = c;
    return c;
  }

  async function current(): Promise<pg.Client> {
    if (client) return client;
    opening ??= open().finally(() => {
      opening = null;
    });
    return opening;
  }

  /** Run one statement on the lock connection (opening it when needed), after every statement queued before it. */
  function query<R extends pg.QueryResultRow>(text: string, values: unknown[], on?: pg.Client): Promise<{ rows: R[]; on: pg.Client }> {
    const run = tail.then(async () => {
      const c = on ?? (await current());
      const { rows } = await c.query<R>(text, values);
      return { rows, on: c };
    });
    tail = run.catch(() => undefined);
    return run;
  }

  const ok = async (text: string, values: unknown[]) => (await query<{ ok: boolean }>(text, values)).rows[0]?.ok ?? false;

  return {
    lost$: lost.asObservable(),
    async connect() {
      await current();
    },
    epoch: () => client,
    tryLockRun: (runId) => ok('select pg_try_advisory_lock($1, hashtext($2)) as ok', [RUN_LOCK_SPACE, runId]),
    async trySlot() {
      for (let tries = 0; tries < 3; tries++) {
        const { rows } = await query<{ slot: number | null; ok: boolean | null }>(
          `select s.i as slot, pg_try_advisory_lock($1::int, s.i) as ok
             from (select i from generate_series(0, $2::int - 1) i
                    where not exists (select 1 from pg_locks l where l.locktype = 'advisory' and l.classid = $1::int::oid
                                        and l.objid = i::oid and l.objsubid = 2 and l.granted)
                    order by i limit 1) s`,
          [RUN_SLOT_SPACE, o.maxActiveRuns],
        );
        const row = rows[0];
        if (!row) return null;
        if (row.ok) return row.slot;
        // Another process took that slot between the look and the lock: look again.
      }
      return null;
    },
    async tryLead() {
      if (!client) return false;
      return ok('select pg_try_advisory_lock($1, hashtext($2)) as ok', [LEADER_SPACE, o.workflowId]);
    },
    async tryLock(namespace, key) {
      const { rows, on } = await query<{ ok: boolean }>('select pg_try_advisory_lock(hashtext($1), $2) as ok', [namespace, key]);
      if (!rows[0]?.ok) return null;
      let released = false;
      return {
        async release() {
          if (released) return false;
          released = true;
          // Gone with its connection: unlocking on a newer connection would free someone else's lock.
          if (client !== on) return false;
          const r = await query<{ ok: boolean }>('select pg_advisory_unlock(hashtext($1), $2) as ok', [namespace, key], on).catch(() => null);
          return r?.rows[0]?.ok === true;
        },
      };
    },
    async unlock(runId, slot, takenOn = client) {
      const c = client;
      if (!c || takenOn !== c) return; // the locks died with their connection
      const sql =
        slot === null
          ? { text: 'select pg_advisory_unlock($1, hashtext($2))', values: [RUN_LOCK_SPACE, runId] }
          : { text: 'select pg_advisory_unlock($1, hashtext($2)), pg_advisory_unlock($3, $4)', values: [RUN_LOCK_SPACE, runId, RUN_SLOT_SPACE, slot] };
      await query(sql.text, sql.values, c).catch(() => undefined);
    },
    async end() {
      await tail;
      const c = client;
      client = null;
      await c?.end().catch(() => undefined);
      lost.complete();
    },
  };
}
