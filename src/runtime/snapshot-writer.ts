import { performance } from 'node:perf_hooks';
import type pg from 'pg';
import { activeSteps, runOutcome, type WorkflowSnapshot } from '../machines/workflow.js';
import { toErrorInfo } from '../lib/errors.js';
import { backoffDelay, type RetryPolicy } from '../lib/retry.js';
import { abortableSleep } from '../lib/time.js';
import type { Logger } from './logger.js';
import { cancelledHere, saveProgress, type RunStatus } from './run-store.js';

/**
 * Writes one run's snapshots to l2flow.run, newest wins: at most one write in flight, and a snapshot queued behind
 * it is replaced by a newer one, so the stored state never goes back in time. A write starts on the next turn of
 * the event loop, not inside the transition: transitions of the same tick (a run's start and a step that settles at
 * once, a step's end and the next one's start) cost one write. A failed write is retried with backoff (logged once
 * per outage). A write refused because the run is no longer ours ends the writer.
 *
 * What a write must precede is the host's business (live-run.ts): a run's final status is written before the run
 * counts as finished (its lock and slot are given back, waiters are told through the status's NOTIFY). A step's
 * side effect never waits for a write: its memo (or the send record) is what keeps it from running twice after a
 * crash, whatever older snapshot the run is restored from.
 */
export interface SnapshotWriter {
  /** Queue the snapshot of a transition with its persisted form, taken at that transition. */
  write(snap: WorkflowSnapshot, persisted: unknown): Promise<void>;
  /** Write what is queued now (a write held back by the spacing goes at once); resolves once nothing is queued or in flight. */
  flushed(): Promise<void>;
}

/**
 * A running run's snapshot is written once the run has been quiet (no transition) for this long, and at most this
 * often; one held back by a run that keeps moving is written at the latest SNAPSHOT_MAX_HOLD_FACTOR times this after
 * the oldest transition it carries. So a run whose steps take milliseconds writes where it parks and where it ends
 * (~2 writes instead of one per transition, ~9), newest wins; a run whose steps take seconds writes each step's start
 * ~20 ms late; a final status is never held back. A write held back is not what stops a process whose run was taken
 * over: every write that records a step asserts the owner in its own statement (sql/008_owner_fence.sql), so such a
 * process is refused at its next step whatever its snapshot writes have told it. What a crash can cost is the replay
 * of at most ~100 ms of memoized steps.
 */
export const SNAPSHOT_SPACING_MS = 20;
export const SNAPSHOT_MAX_HOLD_FACTOR = 5;

/** Retries of a failed write during an outage: 500 ms, 1 s, then every 2 s for as long as it lasts. */
const WRITE_RETRY: RetryPolicy = { maxTries: Infinity, baseDelayMs: 500, maxDelayMs: 2_000, jitter: 'none' };

/** The status a snapshot gives its run. */
export function statusOf(snap: WorkflowSnapshot): RunStatus {
  return runOutcome(snap) ?? 'running';
}

/** Build the writer of one run; `onCancelled` and `onNotOwner` say why a write was refused. */
export function createSnapshotWriter(o: {
  pool: pg.Pool;
  runId: string;
  owner: string;
  log: Logger;
  /** The run was cancelled by an operator: the host should send CANCEL so the cancelled state gets written. */
  onCancelled: () => void;
  /** The run was taken over or finished elsewhere: the host should stop executing it. */
  onNotOwner: () => void;
  /** Default SNAPSHOT_SPACING_MS; 0: every transition (of separate ticks) is written. */
  spacingMs?: number;
}): SnapshotWriter {
  const spacingMs = o.spacingMs ?? SNAPSHOT_SPACING_MS;
  let pending: { snap: WorkflowSnapshot; persisted: unknown } | null = null;
  let writing: Promise<void> | null = null;
  /**
   * When the last write started (performance clock), and how to end the wait of a held-back write early. The
   * writer starts with the run's claim, which wrote the row (owner, status running): the first snapshot is spaced
   * from it too, so a run that goes straight through its first steps writes where it parks, not where it began.
   */
  let lastStart = performance.now();
  /** The last transition queued, and the oldest one not written yet (null: nothing held). */
  let lastTransition = lastStart;
  let heldSince: number | null = null;
  let hurry: (() => void) | null = null;
  /** Set by flushed(): nothing is held back any more. */
  let flushing = false;

  /**
   * Hold a running run's snapshot back until the run was quiet for the spacing (or held for the longest hold), and the
   * spacing since the last write passed; a final one, or flushed(), goes at once.
   */
  async function spaced(): Promise<void> {
    for (;;) {
      const due = Math.max(lastStart + spacingMs, Math.min(lastTransition + spacingMs, (heldSince ?? lastTransition) + spacingMs * SNAPSHOT_MAX_HOLD_FACTOR));
      const wait = due - performance.now();
      if (wait <= 0 || flushing || !pending || statusOf(pending.snap) !== 'running') return;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, wait);
        hurry = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      hurry = null;
    }
  }
  /** The step rows this writer stored, by key: a write sends only those that changed since. */
  const written = new Map<string, string>();

  async function drain(): Promise<void> {
    let failures = 0; // consecutive failed writes
    while (pending) {
      await spaced();
      const next = pending;
      if (!next) break;
      lastStart = performance.now();
      const s = next.snap;
      pending = null;
      heldSince = null;
      const status = statusOf(s);
      const failure = s.context.failure;
      const saved = await saveProgress(o.pool, o.runId, o.owner, {
        status,
        currentStep: activeSteps(s.value).join(',') || (status === 'running' ? null : status),
        loadId: s.context.loadId,
        error: failure ? { code: failure.code, message: `${failure.step}: ${failure.message}`, details: { step: failure.step } } : null,
        snapshot: next.persisted,
        attempt: s.context.attempt,
        steps: s.context.steps,
        tries: s.context.tries,
      }, written).catch((err: unknown) => {
        // Once per outage, not once per retry.
        if (failures === 0) o.log.error({ err: toErrorInfo(err) }, 'could not persist the run snapshot; retrying with backoff');
        pending ??= next;
        return null;
      });
      if (saved === false) {
        // A newer snapshot (the CANCEL transition) may be accepted where this one was not.
        if (pending) continue;
        if (await cancelledHere(o.pool, o.runId, o.owner).catch(() => false)) {
          // Cancelled while this write was in flight: the machine must stop its steps and record the cancelled
          // state, rather than the actor being stopped with steps still marked running.
          o.onCancelled();
          continue;
        }
        o.log.warn('run is no longer owned by this process (taken over or finished elsewhere): stopping it here');
        o.onNotOwner();
        return;
      }
      if (saved === null) {
        failures += 1;
        await abortableSleep(backoffDelay(WRITE_RETRY, failures));
      } else if (failures > 0) {
        o.log.info('run snapshot persisted again');
        failures = 0;
      }
    }
  }

  return {
    write(snap, persisted) {
      lastTransition = performance.now();
      heldSince ??= lastTransition;
      pending = { snap, persisted };
      if (statusOf(snap) !== 'running') hurry?.();
      writing ??= new Promise<void>((resolve) => setImmediate(resolve))
        .then(drain)
        .finally(() => {
          writing = null;
        });
      return writing;
    },
    flushed: () => {
      flushing = true;
      hurry?.();
      return writing?.catch(() => undefined) ?? Promise.resolve();
    },
  };
}
