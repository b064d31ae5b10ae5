import type pg from 'pg';
import { StepError } from '../../lib/errors.js';
import { abortableSleep } from '../../lib/time.js';
import type { Logger } from '../types.js';

export interface PoolsOptions {
  /** Connections for holders; a waiter borrows one only while it tries the slots. */
  pool: pg.Pool;
  /** Airflow-style pools: name → number of steps that may run at once across every l2flow process. */
  pools: Record<string, { slots: number }>;
  logger: Logger;
  pollMs?: number;
}

export interface Pools {
  withSlot<T>(poolName: string, signal: AbortSignal, fn: () => Promise<T>, info?: { runId: string; step: string }): Promise<T>;
  /** Stop every wait in progress (they reject with ABORTED); holders keep their slot until their fn settles. */
  close(): Promise<void>;
}

interface Held {
  client: pg.PoolClient;
  slot: number;
  /** Set when the holding connection broke, which means PostgreSQL has already freed the slot. */
  broken: Error | undefined;
  onError: (err: Error) => void;
}

const TRY_LOCK = `select pg_try_advisory_lock(hashtext('l2flow.pool:' || $1), $2) as ok`;
const UNLOCK = `select pg_advisory_unlock(hashtext('l2flow.pool:' || $1), $2) as ok`;

/**
 * Cross-process pool slots held as session advisory locks (one lock per slot): a holder that dies frees its
 * slot with its connection, so no lease or timeout is needed.
 */
export function createPools(opts: PoolsOptions): Pools {
  const { pool, pools, logger, pollMs = 500 } = opts;
  for (const [name, cfg] of Object.entries(pools)) {
    if (!Number.isInteger(cfg.slots) || cfg.slots < 1) {
      throw new Error(`pools.${name}.slots must be a whole number of at least 1 (got ${String(cfg.slots)})`);
    }
  }
  const closing = new AbortController();

  /** Try every slot once on a fresh client; the client comes back holding the lock, or is released. */
  async function tryOnce(name: string, slots: number): Promise<Held | undefined> {
    const client = await pool.connect();
    const held: Held = { client, slot: -1, broken: undefined, onError: (err) => { held.broken = err; } };
    // A checked-out client has no error listener of the pool's: without ours a killed backend crashes the process.
    client.on('error', held.onError);
    try {
      for (let slot = 0; slot < slots; slot++) {
        const { rows } = await client.query<{ ok: boolean }>({ name: 'l2flow_pool_try', text: TRY_LOCK, values: [name, slot] });
        if (rows[0]?.ok) {
          held.slot = slot;
          return held;
        }
      }
    } catch (err) {
      held.broken ??= err instanceof Error ? err : new Error(String(err));
    }
    client.off('error', held.onError);
    client.release(held.broken);
    if (held.broken) throw held.broken;
    return undefined;
  }

  async function release(name: string, held: Held, info: object): Promise<void> {
    let unlocked = false;
    if (!held.broken) {
      try {
        const { rows } = await held.client.query<{ ok: boolean }>({ name: 'l2flow_pool_unlock', text: UNLOCK, values: [name, held.slot] });
        unlocked = rows[0]?.ok === true;
      } catch (err) {
        held.broken = err instanceof Error ? err : new Error(String(err));
      }
    }
    if (!unlocked) {
      logger.error({ ...info, pool: name, slot: held.slot, err: held.broken },
        'the slot was lost while held (its connection ended); another step may have run in it meanwhile');
    }
    held.client.off('error', held.onError);
    // Destroying the connection is what guarantees the lock cannot outlive us if the unlock did not happen.
    held.client.release(unlocked ? undefined : (held.broken ?? true));
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
    let held: Held | undefined;
    let logged = false;
    for (;;) {
      if (stop.aborted) throw aborted();
      held = await tryOnce(poolName, cfg.slots);
      if (held) break;
      if (!logged) {
        logger.info(ctx, `waiting for a slot of pool ${poolName} (${cfg.slots} slot(s), all taken)`);
        logged = true;
      }
      await abortableSleep(pollMs, stop);
    }
    if (stop.aborted) {
      await release(poolName, held, ctx);
      throw aborted();
    }
    logger.debug({ ...ctx, slot: held.slot, waitedMs: Date.now() - waitStart }, 'pool slot acquired');
    try {
      return await fn();
    } finally {
      await release(poolName, held, ctx);
    }
  }

  return {
    withSlot,
    async close() {
      closing.abort(new Error('pools closed'));
    },
  };
}

