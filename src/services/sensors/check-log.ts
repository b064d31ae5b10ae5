import { performance } from 'node:perf_hooks';
import type pg from 'pg';
import { createRateLimitedWarn } from '../../lib/log.js';
import { ASYNC_COMMIT, prepared } from '../db/index.js';
import type { Logger } from '../types.js';
import type { CheckEvent } from './condition-waiter.js';

/** The last check of one sensor key, as l2flow.sensor_check holds it. */
export interface SensorCheckRecord {
  checkedAt: Date;
  /** The last fallback poll (or the first check): the next poll is due one poke interval after it. */
  polledAt: Date | null;
  ok: boolean;
}

/**
 * Record every batched sensor check in l2flow.sensor_check, so `status` can say when a waiting run's condition was
 * last looked at: ONE upsert per batch for all its keys still waited on, fire and forget (a lost record only makes
 * status older); a batch whose every key held writes nothing.
 */
export function createCheckRecorder(o: { pool: pg.Pool; logger: Logger }): (e: CheckEvent<string>) => void {
  const warn = createRateLimitedWarn(o.logger.child({ module: 'sensor-check-log' }));
  const sql = `insert into l2flow.sensor_check (sensor, key, checked_at, polled_at, ok)
      select $1, k, $2, case when $3 then $2::timestamptz end, $4 from unnest($5::text[]) as k
    on conflict (sensor, key) do update set checked_at = excluded.checked_at, ok = excluded.ok,
      polled_at = coalesce(excluded.polled_at, l2flow.sensor_check.polled_at)
    returning ${ASYNC_COMMIT}`;
  return (e) => {
    // Only the keys still waited on: a key that held released every waiter of it, and status shows a check only for
    // runs waiting in the sensor (a run's flag check that passed cost it one insert for nothing, beside its steps).
    const held = new Set(e.satisfied);
    const keys = held.size === 0 ? e.keys : e.keys.filter((k) => !held.has(k));
    if (keys.length === 0) return;
    // startedAt is on the performance clock: the wall time the check began.
    const at = new Date(Date.now() - (performance.now() - e.startedAt));
    const polled = e.reason === 'poll' || e.reason === 'register';
    o.pool.query({ ...prepared('l2flow_check_log', sql), values: [e.sensor, at, polled, e.ok, keys] }).catch((err: unknown) => warn('record', { err }, 'could not record a sensor check; status shows an older one'));
  };
}

/** The recorded last checks of `sensor` for `keys`. */
export async function lastChecks(db: pg.Pool, sensor: string, keys: string[]): Promise<Map<string, SensorCheckRecord>> {
  const { rows } = await db.query<{ key: string; checked_at: Date; polled_at: Date | null; ok: boolean }>(
    'select key, checked_at, polled_at, ok from l2flow.sensor_check where sensor = $1 and key = any($2::text[])', [sensor, keys]);
  return new Map(rows.map((r) => [r.key, { checkedAt: r.checked_at, polledAt: r.polled_at, ok: r.ok }]));
}
