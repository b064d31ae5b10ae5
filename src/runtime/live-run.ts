import type pg from 'pg';
import { createActor, type Actor, type InspectionEvent, type Observer } from 'xstate';
import { activeSteps, type WorkflowInput, type WorkflowMachine, type WorkflowSnapshot } from '../machines/workflow.js';
import { toErrorInfo } from '../lib/errors.js';
import { MAX_TIMER_MS } from '../lib/time.js';
import type { Logger } from './logger.js';
import type { LockEpoch } from './run-locks.js';
import { failRun, type RunRow, type RunStatus } from './run-store.js';
import { createSnapshotWriter, statusOf } from './snapshot-writer.js';
import { createStepEndTracker, type StepEnd } from './step-ends.js';

/**
 * One run executed by this process: its actor (started, or restored from the run's snapshot), the writer that
 * persists every transition newest-wins, and the run-timeout timer re-armed from the snapshot's absolute deadline.
 * What to do when the run ends, is taken over or crashes is the host's (the supervisor's) decision.
 */

export interface RunEvent {
  runId: string;
  logicalDate: string;
  type: 'started' | 'restored' | 'transition' | 'finished' | 'released';
  steps: string[];
  status: RunStatus;
  at: number;
  /** On transitions: the step tries that ended with it (metrics observe their durations). */
  ended?: StepEnd[];
}

export interface LiveRun {
  row: RunRow;
  /** The run's max_active_runs slot and the lock session it was taken in. */
  slot: number;
  lockedOn: LockEpoch;
  actor: Actor<WorkflowMachine>;
  log: Logger;
  /** Send CANCEL (an operator cancelled the run): the machine stops the step in flight and ends `cancelled`. */
  cancel(): void;
  /** Stop executing here; resolves once the last snapshot taken is written. The run's record stays resumable. */
  stop(): Promise<void>;
}

export interface LiveRunHost {
  pool: pg.Pool;
  machine: WorkflowMachine;
  owner: string;
  logger: Logger;
  sensorTimeoutMs: WorkflowInput['sensorTimeoutMs'];
  runTimeoutMs: number | null;
  retry: WorkflowInput['retry'];
  /** Observer of every actor's inspection events (`l2flow run --inspect`). */
  inspect?: Observer<InspectionEvent>;
  emit(e: RunEvent): void;
  /** The run reached a final state and that state is written. */
  onEnded(run: LiveRun, snap: WorkflowSnapshot, status: RunStatus): void;
  /** The run is no longer this process's to execute (taken over elsewhere, or its actor crashed and was recorded). */
  onLost(run: LiveRun, why: string): void;
}

/** Start (or restore) the actor of `row`; throws when the snapshot cannot be read by this machine. */
export function startLiveRun(host: LiveRunHost, row: RunRow, slot: number, lockedOn: LockEpoch): LiveRun {
  const log = host.logger.child({ runId: row.run_id, logicalDate: row.logical_date, ...(row.load_id ? { loadId: row.load_id } : {}) });
  const input: WorkflowInput = {
    runId: row.run_id,
    workflowId: row.workflow_id,
    logicalDate: row.logical_date,
    businessDate: row.business_date,
    attempt: row.attempt,
    sensorTimeoutMs: host.sensorTimeoutMs,
    runTimeoutMs: host.runTimeoutMs,
    retry: host.retry,
    // A cleared run: its new attempt starts where the clear planned, with the load id its first attempt took.
    startAt: row.start_at,
    loadId: row.load_id === null ? null : Number(row.load_id),
  };
  const restoring = row.snapshot !== null && row.snapshot !== undefined;
  const inspect = host.inspect ? { inspect: host.inspect } : {};
  const actor = restoring
    ? createActor(host.machine, { snapshot: row.snapshot as never, input, ...inspect })
    : createActor(host.machine, { input, ...inspect });
  const emit = (type: RunEvent['type'], snap: WorkflowSnapshot, status: RunStatus, ended?: StepEnd[]) =>
    host.emit({ runId: row.run_id, logicalDate: row.logical_date, type, steps: activeSteps(snap.value), status, at: Date.now(), ...(ended?.length ? { ended } : {}) });
  const stepEnds = createStepEndTracker();
  let deadlineTimer: NodeJS.Timeout | null = null;
  let stopped = false;
  /** A step's write was refused as not the owner's: the run is being let go. */
  let lostHere = false;

  const run: LiveRun = {
    row,
    slot,
    lockedOn,
    actor,
    log,
    cancel() {
      // A run that just ended is still live until its last write settles: there is nothing left to cancel.
      if (stopped || actor.getSnapshot().status !== 'active') return;
      log.info('cancel requested: stopping the run');
      actor.send({ type: 'CANCEL' });
    },
    async stop() {
      halt();
      actor.stop();
      await writer.flushed();
    },
  };
  const halt = () => {
    stopped = true;
    if (deadlineTimer) clearTimeout(deadlineTimer);
    sub.unsubscribe();
  };

  const writer = createSnapshotWriter({
    pool: host.pool,
    runId: row.run_id,
    owner: host.owner,
    log,
    onCancelled: () => run.cancel(),
    onNotOwner: () => host.onLost(run, 'not owner'),
  });
  let last = '';
  const sub = actor.subscribe({
    next: (snap) => {
      if (snap.context.failure?.code === 'NOT_OWNER') {
        // A write of a step was refused: another process executes the run now. Nothing of this transition is
        // written or told; the run is let go (after this callback: the actor is not stopped from inside its own update).
        if (!lostHere) {
          lostHere = true;
          log.warn({ step: snap.context.failure.step }, 'run is no longer owned by this process (taken over): stopping it here');
          queueMicrotask(() => host.onLost(run, 'not owner'));
        }
        return;
      }
      const steps = activeSteps(snap.value).join(',');
      const status = statusOf(snap);
      // Observers first (the supervisor's events: metrics, the dashboard, waiters), then the log line.
      emit('transition', snap, status, stepEnds(snap.context.steps));
      if (steps !== last) log.info({ steps: steps || status, loadId: snap.context.loadId ?? undefined }, 'run entered %s', steps || status);
      last = steps;
      // Taken now, not when the write happens: a write that outlives the actor (a retry during an outage, a
      // release) would otherwise store the stopped actor's snapshot, which restores as a dead run.
      void writer.write(snap, actor.getPersistedSnapshot()).then(() => {
        if (status === 'running' || stopped) return;
        halt();
        emit('finished', snap, status);
        host.onEnded(run, snap, status);
      });
    },
    error: (err) => {
      // An error nothing in the machine handled: record it so the run is never left half-recorded.
      log.error({ err: toErrorInfo(err) }, 'run actor crashed');
      void failRun(host.pool, row.run_id, { code: 'INTERNAL', message: `run actor crashed: ${toErrorInfo(err).message}` }).finally(() =>
        host.onLost(run, 'actor error'),
      );
    },
  });
  actor.start();
  const deadline = actor.getSnapshot().context.runDeadline;
  if (deadline !== null && deadline !== undefined) {
    deadlineTimer = setTimeout(() => {
      log.warn('run timeout reached: failing the run');
      actor.send({ type: 'RUN_TIMEOUT' });
    }, Math.min(Math.max(0, deadline - Date.now()), MAX_TIMER_MS));
    deadlineTimer.unref();
  }
  const snap = actor.getSnapshot();
  emit(restoring ? 'restored' : 'started', snap, statusOf(snap));
  log.info({ restored: restoring, steps: activeSteps(snap.value) }, restoring ? 'run restored from its snapshot' : 'run started');
  return run;
}
