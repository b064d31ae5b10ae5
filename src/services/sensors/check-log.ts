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

/** How long a check is held before it is recorded (see createCheckRecorder). */
export const CHECK_RECORD_DELAY_MS = 1_000;

/**
 * Record sensor checks in l2flow.sensor_check, so `status` can say when a waiting run's condition was last looked at:
 * only the keys still waited on, each with its latest check, written about a second after that check, in ONE upsert
 * per sensor for every key checked meanwhile, fire and forget (a lost record only makes status older). A key that
 * held within that second (a run that parked and was released at once: a backfill's link waits ~0.3 s for its
 * predecessor) is never written: nothing waits on it any more. `flush()` writes what is held now (a graceful stop).
 */
export interface CheckRecorder {
  (e: CheckEvent<string>): void;
  /** Write the checks held now, at once; resolves once written (or failed: logged, as always). */
  flush(): Promise<void>;
}

/** One check as recorded: shared by every key it recorded (a poll of 1,000 keys is one object and one row of `checks`). */
interface HeldCheck {
  at: Date;
  polledAt: Date | null;
  ok: boolean;
}

export function createCheckRecorder(o: { pool: pg.Pool; logger: Logger; delayMs?: number }): CheckRecorder {
  const warn = createRateLimitedWarn(o.logger.child({ module: 'sensor-check-log' }));
  const delayMs = o.delayMs ?? CHECK_RECORD_DELAY_MS;
  // The keys go with the number of their check; each check's times once. A fallback poll of every parked key sends
  // its key list and one pair of timestamps, not two timestamps a key (pg formats every Date one by one: 2,000 a poll
  // with 1,000 parked runs).
  const sql = `insert into l2flow.sensor_check (sensor, key, checked_at, polled_at, ok)
      select $1, k.key, c.at, c.polled_at, c.ok
        from unnest($2::text[], $3::int8[]) as k(key, i)
        join unnest($4::timestamptz[], $5::timestamptz[], $6::boolean[]) with ordinality as c(at, polled_at, ok, i) using (i)
    on conflict (sensor, key) do update set checked_at = excluded.checked_at, ok = excluded.ok,
      polled_at = coalesce(excluded.polled_at, l2flow.sensor_check.polled_at)
    returning ${ASYNC_COMMIT}`;
  /** By sensor and key: the latest check of a key still waited on, not written yet. */
  const pending = new Map<string, Map<string, HeldCheck>>();
  let timer: NodeJS.Timeout | null = null;

  function flush(): Promise<void> {
    if (timer) clearTimeout(timer);
    timer = null;
    const writes: Promise<unknown>[] = [];
    for (const [sensor, byKey] of pending) {
      pending.delete(sensor);
      if (byKey.size === 0) continue;
      const checks = new Map<HeldCheck, number>();
      const keys: string[] = [];
      const numbers: number[] = [];
      for (const [key, check] of byKey) {
        let i = checks.get(check);
        if (i === undefined) checks.set(check, (i = checks.size + 1));
        keys.push(key);
        numbers.push(i);
      }
      const held = [...checks.keys()];
      const values = [sensor, keys, numbers, held.map((c) => c.at), held.map((c) => c.polledAt), held.map((c) => c.ok)];
      writes.push(o.pool.query({ ...prepared('l2flow_check_log', sql), values })
        .catch((err: unknown) => warn('record', { err }, 'could not record a sensor check; status shows an older one')));
    }
    return Promise.all(writes).then(() => undefined);
  }

  const record = (e: CheckEvent<string>): void => {
    const held = new Set(e.satisfied);
    const byKey = pending.get(e.sensor) ?? pending.set(e.sensor, new Map()).get(e.sensor)!;
    // A key that held released every waiter of it: its earlier check is not worth writing any more.
    for (const k of held) byKey.delete(k);
    const keys = held.size === 0 ? e.keys : e.keys.filter((k) => !held.has(k));
    if (keys.length === 0) return;
    // startedAt is on the performance clock: the wall time the check began.
    const at = new Date(Date.now() - (performance.now() - e.startedAt));
    const polled = e.reason === 'poll' || e.reason === 'register';
    const check: HeldCheck = { at, polledAt: polled ? at : null, ok: e.ok };
    /** A later hint check keeps the time of an earlier poll not yet written (the next poll is due from it). */
    let afterPoll: Map<HeldCheck, HeldCheck> | undefined;
    for (const k of keys) {
      const earlier = polled ? undefined : byKey.get(k);
      if (!earlier?.polledAt) {
        byKey.set(k, check);
        continue;
      }
      afterPoll ??= new Map();
      let kept = afterPoll.get(earlier);
      if (!kept) afterPoll.set(earlier, (kept = { at, polledAt: earlier.polledAt, ok: e.ok }));
      byKey.set(k, kept);
    }
    if (!timer) {
      timer = setTimeout(() => void flush(), delayMs);
      timer.unref();
    }
  };
  return Object.assign(record, { flush });
}

/** The recorded last checks of `sensor` for `keys`. */
export async function lastChecks(db: pg.Pool, sensor: string, keys: string[]): Promise<Map<string, SensorCheckRecord>> {
  const { rows } = await db.query<{ key: string; checked_at: Date; polled_at: Date | null; ok: boolean }>(
    'select key, checked_at, polled_at, ok from l2flow.sensor_check where sensor = $1 and key = any($2::text[])', [sensor, keys]);
  return new Map(rows.map((r) => [r.key, { checkedAt: r.checked_at, polledAt: r.polled_at, ok: r.ok }]));
}
