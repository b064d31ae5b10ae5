import pg from 'pg';
import { checkout, type CheckedOutClient } from './sql.js';

/**
 * Connections for long statements (child workflows), apart from the shared pool: a child's CALL holds a backend
 * for its whole run, so it must not hold one of the few connections every run's short queries need. At most `max`
 * per process; a connection comes back for reuse only after a statement that ended cleanly (release without an
 * error), and is closed after a failure, a cancel or a timeout, so no broken session state reaches the next child.
 */
export interface DedicatedConnections {
  /** A connection, waiting (without holding any other) while `max` are busy; ABORTED when `signal` fires first. */
  acquire(signal: AbortSignal, what: string): Promise<CheckedOutClient>;
  /** How many are checked out now, and how many acquirers wait. */
  stats(): { inUse: number; waiting: number };
  /** Close every idle connection. */
  end(): Promise<void>;
}

/** Build the dedicated-connection source of one process. */
export function createDedicatedConnections(o: { connectionString: string; max: number; applicationName: string }): DedicatedConnections {
  const pool = new pg.Pool({ connectionString: o.connectionString, max: o.max, application_name: o.applicationName, idleTimeoutMillis: 10_000 });
  // An idle connection that ends (restart, pg_terminate_backend) is replaced; without a listener it would crash us.
  pool.on('error', () => undefined);
  return {
    acquire: (signal, what) => checkout(pool, { signal, what }),
    stats: () => ({ inUse: pool.totalCount - pool.idleCount, waiting: pool.waitingCount }),
    end: () => pool.end(),
  };
}
