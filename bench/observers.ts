/**
 * What the latency benchmarks share about the flag: the raw LISTEN observer (the floor), and the probe that tells
 * when a run's first flag check was answered (a run is parked only then). An observer notices the flag row of a
 * business date; the benchmark times it from the INSERT.
 */
import { performance } from 'node:perf_hooks';
import pg from 'pg';
import { DWH_FLAG_CHANNEL, type SensorCheck } from '../src/services/sensors/index.js';

export const FLAG = 'l1_to_l2_load_successfull';

/** Points on an observer's way from NOTIFY to "seen", as performance.now() values. */
export interface Marks {
  /** The notification reached the observer's LISTEN connection (the hub). */
  notified?: number;
  /** The sensor's confirming check query was sent / answered. */
  checkSent?: number;
  checked?: number;
}

export interface Armed {
  /** Resolves with performance.now() at the moment the observer noticed the flag. */
  seen: Promise<number>;
  /** Read after `seen`: where the time went. */
  marks?: () => Marks;
  /** After `seen`: resolves once the observer is at rest again (a run: finished); rejects if it did not succeed. */
  done?: () => Promise<void>;
}

/**
 * Something that notices a flag for a business date. `arm` starts the wait and returns once the observer is
 * parked (its first check done); the benchmark then pauses SETTLE_MS and inserts the flag.
 */
export interface Observer {
  name: string;
  /** Business date of the first sample; sample i uses firstDate + i days (ranges of observers never overlap). */
  firstDate: string;
  arm(businessDate: string): Promise<Armed>;
  close(): Promise<void>;
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Reject with a message naming what did not happen if `p` takes longer than `ms`. */
export function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`benchmark: ${what} did not happen within ${ms} ms`)), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

/** The flag sensor's name in check reports (and the run's step it parks in). */
export const FLAG_SENSOR = 'wait_for_l2_full_load';

/**
 * When the flag sensor's last check covering each business date went out and came back, from the sensor's own
 * check reports: feed `onCheck` to createFlagSensor's `onCheck`, or subscribe it to `app.sensorChecks$`. With a
 * pool, `quiet` also waits for that pool to have no connection checked out (so no query in flight).
 */
export interface FlagChecks {
  onCheck(e: SensorCheck): void;
  /** Resolves once a flag check covering `date` has been answered and (with a pool) the pool is idle. */
  quiet(date: string, timeoutMs: number): Promise<void>;
  lastCheck(date: string): { sent: number; done: number } | undefined;
  forget(date: string): void;
  stop(): void;
}

export function noteFlagChecks(pool?: pg.Pool): FlagChecks {
  const checks = new Map<string, { sent: number; done: number }>();
  const waiters: (() => void)[] = [];
  const wake = () => {
    for (const w of waiters.splice(0)) w();
  };
  // 'release' fires before the client is back among the idle ones: look once the pool has put it there.
  const onRelease = () => queueMicrotask(wake);
  pool?.on('release', onRelease);
  const idle = () => !pool || (pool.waitingCount === 0 && pool.idleCount === pool.totalCount);
  return {
    onCheck(e) {
      if (e.sensor !== FLAG_SENSOR) return;
      for (const date of e.keys) checks.set(date, { sent: e.startedAt, done: e.finishedAt });
      wake();
    },
    async quiet(date, timeoutMs) {
      const ready = () => checks.has(date) && idle();
      const wait = (async () => {
        while (!ready()) await new Promise<void>((r) => waiters.push(r));
      })();
      await within(wait, timeoutMs, `the first flag check for ${date}${pool ? ' with the pool idle' : ''}`);
    },
    lastCheck: (date) => checks.get(date),
    forget: (date) => void checks.delete(date),
    stop: () => void pool?.off('release', onRelease),
  };
}

/** A bare pg client LISTENing on the flag channel: the floor any event-driven sensor can reach. */
export async function rawListener(uri: string, firstDate: string): Promise<Observer> {
  const client = new pg.Client({ connectionString: uri, application_name: 'l2flow-bench-raw' });
  await client.connect();
  const expected = new Map<string, (t: number) => void>();
  client.on('notification', (n) => {
    const t = performance.now();
    const date = (JSON.parse(n.payload ?? '{}') as { business_date?: string }).business_date ?? '';
    expected.get(date)?.(t);
    expected.delete(date);
  });
  await client.query(`listen ${DWH_FLAG_CHANNEL}`);
  return {
    name: 'raw LISTEN',
    firstDate,
    arm: async (date) => ({ seen: new Promise<number>((resolve) => expected.set(date, resolve)) }),
    close: () => client.end(),
  };
}
