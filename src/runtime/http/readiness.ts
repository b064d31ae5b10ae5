import type pg from 'pg';
import { pendingMigrations } from '../migrate.js';
import type { NotifyDelivery } from '../listen-check.js';

/**
 * /readyz: the database answers, the LISTEN connection is up, every shipped migration is applied. The listener's
 * `delivery` (does a NOTIFY sent through the query pool reach it?) is shown but never makes the process unready:
 * without it the sensors still work, on their polls.
 */

export interface Check {
  ok: boolean;
  /** What is wrong and what to do, when not ok. */
  error?: string;
}

export interface Readiness {
  ok: boolean;
  checks: { database: Check; listener: Check & { delivery?: NotifyDelivery }; migrations: Check };
}

/** A promise that rejects after `ms`: a database that does not answer is as unready as one that refuses. */
function within<T>(ms: number, what: string, p: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not answer within ${ms} ms`)), ms);
  });
  return Promise.race([p, late]).finally(() => clearTimeout(timer));
}

const failed = (err: unknown): Check => ({ ok: false, error: (err as Error).message });

/** The readiness probe of one process; each call asks the database afresh (a probe is a few seconds apart). */
export function createReadiness(d: {
  pool: pg.Pool;
  /** The warehouse, when l2flow's tables live in a database of their own: it must answer too. */
  dwh?: pg.Pool;
  listenerConnected: () => boolean;
  listenerDelivery?: () => NotifyDelivery;
  timeoutMs?: number;
}): () => Promise<Readiness> {
  const timeoutMs = d.timeoutMs ?? 2000;
  const separate = d.dwh !== undefined && d.dwh !== d.pool;
  // With two databases, a failure says which one.
  const ping = (pool: pg.Pool, what: string) => within(timeoutMs, what, pool.query('select 1')
    .catch((err: unknown) => { throw separate ? new Error(`${what}: ${(err as Error).message}`, { cause: err }) : err; }));
  return async () => {
    const [database, migrations] = await Promise.all([
      Promise.all([ping(d.pool, separate ? 'the state database' : 'the database'), ...(separate ? [ping(d.dwh!, 'the warehouse')] : [])])
        .then((): Check => ({ ok: true }), failed),
      within(timeoutMs, 'the database', pendingMigrations(d.pool)).then(
        (pending): Check => (pending.length ? { ok: false, error: `not applied: ${pending.join(', ')}: run \`l2flow migrate\`` } : { ok: true }),
        failed,
      ),
    ]);
    const up: Check = d.listenerConnected() ? { ok: true } : { ok: false, error: 'the LISTEN connection is down; it reconnects by itself' };
    const listener = d.listenerDelivery ? { ...up, delivery: d.listenerDelivery() } : up;
    return { ok: database.ok && listener.ok && migrations.ok, checks: { database, listener, migrations } };
  };
}
