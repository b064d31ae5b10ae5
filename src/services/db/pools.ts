import { StepError } from '../../lib/errors.js';
import { abortableSleep } from '../../lib/time.js';
import type { Logger } from '../types.js';

/** A lock held on the process's lock session. */
export interface HeldLock {
  /** Release it; false when it was already gone with the connection it was taken on. */
  release(): Promise<boolean>;
}

/** The session advisory locks pools are built on: the runtime's lock connection, where run locks live too. */
export interface SessionLocks {
  /** Try the advisory lock (hashtext(namespace), key); null when another session holds it. */
  tryLock(namespace: string, key: number): Promise<HeldLock | null>;
}

export interface PoolsOptions {
  /** Where slots are locked: no pooled connection is held while a step waits for, or holds, a slot. */
  locks: SessionLocks;
  /** Airflow-style pools: name → number of steps that may run at once across every l2flow process. */
  pools: Record<string, { slots: number }>;
  logger: Logger;
  /** How often a waiter looks again for a slot freed by another process (one freed here wakes it at once). */
  pollMs?: number;
  /** Told how long each acquired slot was waited for (metrics); must not throw. */
  onAcquired?: (poolName: string, waitedMs: number) => void;
}

export interface Pools {
  withSlot<T>(poolName: string, signal: AbortSignal, fn: () => Promise<T>, info?: { runId: string; step: string }): Promise<T>;
  /** Stop every wait in progress (they reject with ABORTED); holders keep their slot until their fn settles. */
  close(): Promise<void>;
}

/**
 * Cross-process pool slots held as session advisory locks (one lock per slot): a holder that dies frees its
 * slot with its connection, so no lease or timeout is needed.
 */
export function createPools(opts: PoolsOptions): Pools {
  const { locks, pools, logger, pollMs = 500 } = opts;
  const closing = new AbortController();
  /** Waiters of this process per pool: a slot freed here wakes them at once instead of at their next poll. */
  const wakers = new Map<string, Set<() => void>>();

  /**
   * Slots held by this process. Session advisory locks are re-entrant: the lock session would grant a slot it
   * already holds a second time, so slots taken here are skipped here; the lock keeps out every other process.
   */
  const heldHere = new Map<string, Set<number>>();

  async function tryOnce(name: string, slots: number): Promise<{ slot: number; lock: HeldLock } | undefined> {
    const mine = heldHere.get(name) ?? new Set<number>();
    heldHere.set(name, mine);
    for (let slot = 0; slot < slots; slot++) {
      if (mine.has(slot)) continue;
      mine.add(slot);
      const lock = await locks.tryLock(`l2flow.pool:${name}`, slot).catch((err: unknown) => {
        mine.delete(slot);
        throw err;
      });
      if (lock) return { slot, lock };
      mine.delete(slot);
    }
    return undefined;
  }

  /** Sleep until the next poll, a slot freed in this process, or the signal. */
  async function nap(name: string, stop: AbortSignal): Promise<void> {
    const wake = new AbortController();
    const set = wakers.get(name) ?? new Set();
    wakers.set(name, set);
    const waker = () => wake.abort();
    set.add(waker);
    try {
      await abortableSleep(pollMs, AbortSignal.any([stop, wake.signal]));
    } finally {
      set.delete(waker);
    }
  }

  async function withSlot<T>(
    poolName: string,
    signal: AbortSignal,
    fn: () => Promise<T>,
    info?: { runId: string; step: string },
  ): Promise<T> {
    const cfg = pools[poolName];
    if (!cfg) throw new Error(`pool ${poolName} is not configured: add pools.${poolName}: { slots: N } to the l2flow config`);
    const ctx = { ...info, pool: poolName };
    const stop = AbortSignal.any([signal, closing.signal]);
    const aborted = () =>
      new StepError('ABORTED', `${info ? `${info.step} of run ${info.runId}` : 'a step'} stopped waiting for a slot of pool ${poolName}`,
        { cause: stop.reason });
    const waitStart = Date.now();
    let held: { slot: number; lock: HeldLock } | undefined;
    let logged = false;
    for (;;) {
      if (stop.aborted) throw aborted();
      held = await tryOnce(poolName, cfg.slots);
      if (held) break;
      if (!logged) {
        logger.info(ctx, `waiting for a slot of pool ${poolName} (${cfg.slots} slot(s), all taken)`);
        logged = true;
      }
      await nap(poolName, stop);
    }
    const release = async () => {
      const released = await held.lock.release();
      heldHere.get(poolName)?.delete(held.slot);
      if (!released) {
        logger.error({ ...ctx, slot: held.slot },
          'the slot was lost while held (the lock connection ended); another step may have run in it meanwhile');
      }
      for (const wake of wakers.get(poolName) ?? []) wake();
    };
    if (stop.aborted) {
      await release();
      throw aborted();
    }
    const waitedMs = Date.now() - waitStart;
    logger.debug({ ...ctx, slot: held.slot, waitedMs }, 'pool slot acquired');
    opts.onAcquired?.(poolName, waitedMs);
    // The slot is given back after fn settles without the step waiting for it: the unlock is queued on the lock
    // connection (behind nothing of this step), so the step's result reaches the run one round trip sooner. Any
    // later lock statement of this process runs after it; waiters here are woken once it is done.
    try {
      return await fn();
    } finally {
      void release().catch((err: unknown) => logger.error({ ...ctx, err }, 'could not give back the pool slot'));
    }
  }

  return {
    withSlot,
    async close() {
      closing.abort(new Error('pools closed'));
    },
  };
}
