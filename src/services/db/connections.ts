import pg from 'pg';
import { checkout, type CheckedOutClient } from './sql.js';

/** A child connection, with its backend's pid: a cancel or timeout signals that backend from another connection. */
export interface ChildConnection extends CheckedOutClient {
  pid: number;
}

/**
 * Connections for long statements (child workflows), apart from the shared pool: a child's CALL holds a backend
 * for its whole run, so it must not hold one of the few connections every run's short queries need. At most `max`
 * per process; a connection comes back for reuse only after a statement that ended cleanly (release without an
 * error), and is closed after a failure, a cancel or a timeout, so no broken session state reaches the next child.
 */
export interface DedicatedConnections {
  /** A connection, waiting (without holding any other) while `max` are busy; ABORTED when `signal` fires first. */
  acquire(signal: AbortSignal, what: string): Promise<ChildConnection>;
  /** How many are checked out now, and how many acquirers wait. */
  stats(): { inUse: number; waiting: number };
  /** Close every idle connection. */
  end(): Promise<void>;
}

/**
 * Every child connection asks the server to watch its client. A backend busy with a statement does not read its
 * socket, so if l2flow dies mid-child (SIGKILL, OOM) PostgreSQL would run the orphaned statement to its end: beside
 * the step resumed by the next process, outside the pool slot (freed with the dead process's connections), and, for a
 * child that commits inside, committing. With client_connection_check_interval (PostgreSQL 14+) the server polls the
 * socket while the statement runs and aborts it about a second after the client is gone; older servers skip it.
 * Asked once per connection (a session setting, set outside any transaction), with the backend's pid.
 */
const CLIENT_CHECK_INTERVAL_MS = 1_000;
const SESSION_SETUP = `select pg_backend_pid() as pid,
    case when current_setting('server_version_num')::int >= 140000
         then set_config('client_connection_check_interval', '${CLIENT_CHECK_INTERVAL_MS}', false) end as client_check`;

/** Build the dedicated-connection source of one process. */
export function createDedicatedConnections(o: { connectionString: string; max: number; applicationName: string }): DedicatedConnections {
  // Pipeline mode: statements issued without waiting for the previous one's answer go out at once (a transactional
  // child sends its `begin` and guard, then its statement, in one round trip); statements awaited one by one behave
  // as without it.
  const pool = new pg.Pool({ connectionString: o.connectionString, max: o.max, application_name: o.applicationName, idleTimeoutMillis: 10_000, pipeline: true });
  // An idle connection that ends (restart, pg_terminate_backend) is replaced; without a listener it would crash us.
  pool.on('error', () => undefined);
  /** Each live connection's backend pid, known once its session is set up. */
  const pids = new WeakMap<pg.ClientBase, number>();
  return {
    async acquire(signal, what) {
      const c = await checkout(pool, { signal, what });
      let pid = pids.get(c.client);
      if (pid === undefined) {
        try {
          pid = (await c.client.query<{ pid: number }>(SESSION_SETUP)).rows[0]!.pid;
        } catch (err) {
          c.release(err);
          throw err;
        }
        pids.set(c.client, pid);
      }
      return { ...c, pid };
    },
    stats: () => ({ inUse: pool.totalCount - pool.idleCount, waiting: pool.waitingCount }),
    end: () => pool.end(),
  };
}
