import { performance } from 'node:perf_hooks';
import type { Observable, Subscription } from 'rxjs';
import { StepError } from '../../lib/errors.js';
import { createRateLimitedWarn } from '../../lib/log.js';
import { formatDuration, MAX_TIMER_MS } from '../../lib/time.js';
import type { Logger } from '../types.js';

/** What a parked waiter is told when its condition holds. */
export interface WaitResult {
  /** How many check queries looked at this waiter's key while it waited. */
  checks: number;
}

/**
 * Why a batched check ran: the first request of the batch decides (keys other requests add while it is queued
 * ride along). `register`: a new waiter; `hint`: a notification; `reconnect`: the listener (re)connected;
 * `poll`: the fallback poll; `deadline`: the last check of a waiter at its deadline.
 */
export type CheckReason = 'register' | 'hint' | 'reconnect' | 'poll' | 'deadline';

/** One batched check query, reported after it answered (`ok`) or failed (`ok` false, `satisfied` empty). */
export interface CheckEvent<K extends string> {
  /** The waiter's name (the step, e.g. `wait_for_l2_full_load`). */
  sensor: string;
  /** Every key the query asked about. */
  keys: K[];
  /** The keys found to hold: their waiters are released. */
  satisfied: K[];
  /**
   * performance.now() when the batch's first request came in (for `hint`: when the notification reached this
   * process; the batch may then wait behind a check already running), just before the query was issued, and just
   * after it answered or failed.
   */
  requestedAt: number;
  startedAt: number;
  finishedAt: number;
  ok: boolean;
  reason: CheckReason;
}

export interface ConditionWaiterOptions<K extends string> {
  /** The waiting step's name, used in logs and errors (e.g. `wait_for_l2_full_load`). */
  name: string;
  /** ONE query answering, for all given keys, which ones hold now. */
  check: (keys: K[]) => Promise<Set<K>>;
  /** Keys that a notification says may now hold; the check decides. */
  hints$: Observable<K[]>;
  /** Emits after every (re)connect of the listener: every parked key is checked again. */
  reconnects$: Observable<void>;
  /** Fallback poll interval: one batched check of every parked key. */
  pollIntervalMs: number;
  logger: Logger;
  /** How a key reads in errors, e.g. "flag 'x' in md.dwh_flag for business date 2024-01-01". */
  describeKey?: (key: K) => string;
  /** How long the last check at the deadline may take before the waiter fails anyway. */
  lastCheckGraceMs?: number;
  /**
   * Told about every batched check once it is done, in the event loop's next turn: after the waiters it released
   * have gone on (their runs' transitions are not held up by the bookkeeping: metrics, the check log). Checks are
   * told in the order they ran; whatever the listener throws is logged and ignored.
   */
  onCheck?: (e: CheckEvent<K>) => void;
}

export interface ConditionWaiter<K extends string> {
  /**
   * Park until the condition for `key` holds; rejects with SENSOR_TIMEOUT at `deadline` (epoch ms) or ABORTED.
   * `since` (epoch ms, default now) is when the wait began: a step resumed after a restart passes its original
   * start, so errors report the whole wait, not only the part after the restart.
   */
  wait(key: K, opts: { deadline: number; signal: AbortSignal; since?: number | undefined }): Promise<WaitResult>;
  /** Number of parked waiters. */
  waiting(): number;
  /** Stop listening for hints and fail every parked waiter with ABORTED. */
  close(): void;
}

interface Waiter<K> {
  key: K;
  since: number;
  deadline: number;
  checks: number;
  /** Set at the deadline: the first check started after this sequence number decides, then the waiter fails. */
  expiredAtSeq: number | null;
  timer: NodeJS.Timeout | undefined;
  signal: AbortSignal;
  onAbort: () => void;
  resolve: (r: WaitResult) => void;
  reject: (err: unknown) => void;
}

/** One hub, many waiters: parks keys and answers them all with one batched check per hint, reconnect or poll. */
export function createConditionWaiter<K extends string>(opts: ConditionWaiterOptions<K>): ConditionWaiter<K> {
  const log = opts.logger.child({ module: 'condition-waiter', sensor: opts.name });
  const warn = createRateLimitedWarn(log);
  const describe = opts.describeKey ?? ((key: K) => `key "${key}"`);
  const graceMs = opts.lastCheckGraceMs ?? 5_000;
  const parked = new Map<K, Set<Waiter<K>>>();
  const pending = new Set<K>();
  /** Why the batch `pending` will be checked in: set by the request that made it non-empty. */
  let pendingReason: CheckReason = 'register';
  let pendingSince = 0;
  let count = 0;
  let running = false;
  let flushQueued = false;
  let checkSeq = 0;
  let lastCheckError: string | undefined;
  let pollTimer: NodeJS.Timeout | undefined;
  let closed = false;

  const subscriptions: Subscription[] = [
    opts.hints$.subscribe((keys) => request(keys, 'hint')),
    opts.reconnects$.subscribe(() => request(parked.keys(), 'reconnect')),
  ];

  function request(keys: Iterable<K>, reason: CheckReason): void {
    const wasEmpty = pending.size === 0;
    for (const key of keys) if (parked.has(key)) pending.add(key);
    if (wasEmpty && pending.size > 0) {
      pendingReason = reason;
      pendingSince = performance.now();
    }
    if (pending.size === 0 || running || flushQueued) return; // a running check loop picks pending keys up
    flushQueued = true;
    // Waiters registered in the same tick share the first query.
    queueMicrotask(() => {
      flushQueued = false;
      void runChecks();
    });
  }

  async function runChecks(): Promise<void> {
    running = true;
    try {
      while (pending.size > 0) {
        const keys = [...pending].filter((k) => parked.has(k));
        const reason = pendingReason;
        const requestedAt = pendingSince;
        pending.clear();
        if (keys.length === 0) break;
        const seq = ++checkSeq;
        let holds: Set<K> | null = null;
        const startedAt = performance.now();
        let finishedAt: number;
        try {
          holds = await opts.check(keys);
          finishedAt = performance.now();
          lastCheckError = undefined;
        } catch (err) {
          finishedAt = performance.now();
          lastCheckError = (err as Error)?.message ?? String(err);
          warn('check', { err, keys: keys.length }, `${opts.name}: check query failed; still waiting, the next hint or poll retries`);
        }
        for (const key of keys) {
          for (const w of [...(parked.get(key) ?? [])]) {
            w.checks += 1;
            if (holds?.has(key)) settle(w, null);
            else if (w.expiredAtSeq !== null && seq > w.expiredAtSeq) settle(w, timeoutError(w));
          }
        }
        if (opts.onCheck) {
          const held = holds;
          const satisfied = held ? keys.filter((k) => held.has(k)) : [];
          const e: CheckEvent<K> = { sensor: opts.name, keys, satisfied, requestedAt, startedAt, finishedAt, ok: held !== null, reason };
          setImmediate(() => report(e));
        }
      }
    } finally {
      running = false;
    }
  }

  function report(e: CheckEvent<K>): void {
    try {
      opts.onCheck?.(e);
    } catch (err) {
      warn('onCheck', { err }, `${opts.name}: the onCheck listener threw; ignored`);
    }
  }

  function updatePoll(): void {
    if (parked.size > 0 && !pollTimer && !closed) {
      pollTimer = setInterval(() => request(parked.keys(), 'poll'), opts.pollIntervalMs);
      pollTimer.unref();
    } else if (parked.size === 0 && pollTimer) {
      clearInterval(pollTimer);
      pollTimer = undefined;
    }
  }

  function settle(w: Waiter<K>, err: unknown): void {
    const set = parked.get(w.key);
    if (!set?.delete(w)) return; // already settled
    if (set.size === 0) parked.delete(w.key);
    count -= 1;
    clearTimeout(w.timer);
    w.signal.removeEventListener('abort', w.onAbort);
    updatePoll();
    if (err) w.reject(err);
    else w.resolve({ checks: w.checks });
  }

  function armDeadline(w: Waiter<K>): void {
    if (!Number.isFinite(w.deadline)) return;
    const ms = w.deadline - Date.now();
    if (ms > 0) {
      w.timer = setTimeout(() => armDeadline(w), Math.min(ms, MAX_TIMER_MS));
      w.timer.unref();
      return;
    }
    // One last check before failing: a flag whose notification was lost is still seen.
    w.expiredAtSeq = checkSeq;
    w.timer = setTimeout(() => settle(w, timeoutError(w)), graceMs);
    w.timer.unref();
    request([w.key], 'deadline');
  }

  function timeoutError(w: Waiter<K>): StepError {
    const waitedMs = Date.now() - w.since;
    const lastError = lastCheckError ? `; the last check failed: ${lastCheckError}` : '';
    return new StepError(
      'SENSOR_TIMEOUT',
      `${opts.name} timed out: ${describe(w.key)} did not appear after waiting ${formatDuration(waitedMs)} ` +
        `(deadline ${new Date(w.deadline).toISOString()}, ${w.checks} checks)${lastError}`,
      { details: { sensor: opts.name, key: w.key, waitedMs, checks: w.checks, deadline: w.deadline } },
    );
  }

  function abortedError(key: K, since: number, reason: unknown): StepError {
    return new StepError('ABORTED', `${opts.name}: waiting for ${describe(key)} was cancelled after ${formatDuration(Date.now() - since)}`, {
      cause: reason,
      details: { sensor: opts.name, key },
    });
  }

  return {
    wait(key, { deadline, signal, since }) {
      if (closed) return Promise.reject(abortedError(key, Date.now(), new Error(`${opts.name} is closed`)));
      if (signal.aborted) return Promise.reject(abortedError(key, Date.now(), signal.reason));
      return new Promise<WaitResult>((resolve, reject) => {
        const w: Waiter<K> = {
          key,
          since: since !== undefined && Number.isFinite(since) ? Math.min(since, Date.now()) : Date.now(),
          deadline,
          checks: 0,
          expiredAtSeq: null,
          timer: undefined,
          signal,
          onAbort: () => settle(w, abortedError(key, w.since, signal.reason)),
          resolve,
          reject,
        };
        let set = parked.get(key);
        if (!set) parked.set(key, (set = new Set()));
        set.add(w);
        count += 1;
        signal.addEventListener('abort', w.onAbort, { once: true });
        updatePoll();
        request([key], 'register'); // a condition that already holds is seen at once, not after the first poll
        armDeadline(w);
      });
    },
    waiting: () => count,
    close() {
      closed = true;
      for (const s of subscriptions) s.unsubscribe();
      for (const set of [...parked.values()]) {
        for (const w of [...set]) settle(w, abortedError(w.key, w.since, new Error(`${opts.name} was closed`)));
      }
      pending.clear();
      updatePoll();
    },
  };
}
