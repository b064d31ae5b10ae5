import pg from 'pg';
import { StepError } from '../../lib/errors.js';

/**
 * Connections for long statements (child workflows), apart from the shared pool: a child's CALL holds a backend
 * for its whole run, so it must not hold one of the few connections every run's short queries need. At most `max`
 * per process; a connection comes back for reuse only after a statement that ended cleanly, and is closed after a
 * failure, a cancel or a timeout, so no session state of a broken statement is ever carried to the next child.
 */
export interface DedicatedConnection {
  client: pg.ClientBase;
  /** The error the connection died of, if it did. */
  broken(): Error | undefined;
  /** Give the connection back; `discard` (or a broken connection) closes it instead. */
  release(discard?: boolean): void;
}

export interface DedicatedConnections {
  /** A connection, waiting (without holding any other) while `max` are busy; ABORTED when `signal` fires first. */
  acquire(signal: AbortSignal, what: string): Promise<DedicatedConnection>;
  /** How many are checked out now, and how many acquirers wait. */
  stats(): { inUse: number; waiting: number };
  /** Close every idle connection and refuse new ones. */
  end(): Promise<void>;
}

/** Build the dedicated-connection source of one process. */
export function createDedicatedConnections(o: { connectionString: string; max: number; applicationName: string }): DedicatedConnections {
  const pool = new pg.Pool({ connectionString: o.connectionString, max: o.max, application_name: o.applicationName, idleTimeoutMillis: 10_000 });
  // An idle connection that ends (restart, pg_terminate_backend) is replaced; without a listener it would crash us.
  pool.on('error', () => undefined);

  return {
    stats: () => ({ inUse: pool.totalCount - pool.idleCount, waiting: pool.waitingCount }),
    async acquire(signal, what) {
      const aborted = () => new StepError('ABORTED', `${what} was cancelled while waiting for a database connection`, { cause: signal.reason });
      if (signal.aborted) throw aborted();
      const connecting = pool.connect();
      let onAbort: (() => void) | undefined;
      const gaveUp = new Promise<never>((_, reject) => {
        onAbort = () => reject(aborted());
        signal.addEventListener('abort', onAbort, { once: true });
      });
      let client: pg.PoolClient;
      try {
        client = await Promise.race([connecting, gaveUp]);
      } catch (err) {
        // pg's queue cannot be left: a connection that arrives after the abort goes straight back.
        void connecting.then((c) => c.release(), () => undefined);
        throw err;
      } finally {
        signal.removeEventListener('abort', onAbort!);
      }
      let broken: Error | undefined;
      // The pool drops its own listener on checkout; pg emits 'error' on a connection that ends while held.
      const onError = (err: Error) => {
        broken ??= err;
      };
      client.on('error', onError);
      let released = false;
      return {
        client,
        broken: () => broken,
        release(discard = false) {
          if (released) return;
          released = true;
          client.release(broken ?? (discard ? true : undefined));
          client.off('error', onError);
        },
      };
    },
    async end() {
      await pool.end();
    },
  };
}
