import type pg from 'pg';
import { BehaviorSubject, Subject, filter, type Observable, type Subscription } from 'rxjs';
import { createActor, type Actor, type Subscription as ActorSubscription } from 'xstate';
import { activeSteps, type WorkflowInput, type WorkflowMachine, type WorkflowSnapshot } from '../machines/workflow.js';
import { toErrorInfo } from '../lib/errors.js';
import type { Logger } from './logger.js';
import { MAX_TIMER_MS } from '../lib/time.js';
import type { LockEpoch, RunLocks } from './run-locks.js';
import { failRun, runsNoLongerActive, takeRun, unfinishedRunIds, type RunRow, type RunStatus } from './run-store.js';
import { createSnapshotWriter, statusOf, type SnapshotWriter } from './snapshot-writer.js';

/**
 * The one place where runs are started, restored and stopped. A run is executed by whoever holds its session
 * advisory lock: the lock lives on this process's lock connection, so a crashed process frees its runs with no
 * timeout logic. After every transition the actor's persisted snapshot is written, newest-wins and in order.
 */


export interface RunEvent {
  runId: string;
  logicalDate: string;
  type: 'started' | 'restored' | 'transition' | 'finished' | 'released';
  steps: string[];
  status: RunStatus;
  at: number;
}

export interface SupervisorOptions {
  pool: pg.Pool;
  /** The process's lock connection (run locks, max_active_runs slots, leadership); the pool is for everything else. */
  locks: RunLocks;
  machine: WorkflowMachine;
  workflowId: string;
  owner: string;
  maxActiveRuns: number;
  sensorTimeoutMs: WorkflowInput['sensorTimeoutMs'];
  /** Whole-run timeout (Airflow's dagrun_timeout), or null. */
  runTimeoutMs?: number | null;
  /** Notifications of channel l2flow_run (queued runs wake the claim loop) and listener reconnects. */
  runNotifications$: Observable<{ status?: unknown; workflow_id?: unknown; run_id?: unknown }>;
  reconnects$: Observable<void>;
  claimIntervalMs?: number;
  logger: Logger;
  /** Called after a run ends failed (the failure mail was queued): lets the mail dispatcher deliver at once. */
  onRunFailed?: (runId: string) => void;
}

interface LiveRun {
  row: RunRow;
  slot: number;
  /** The lock connection that holds this run's locks: once it is gone, unlocking on a newer one would free others' slots. */
  lockedOn: LockEpoch;
  actor: Actor<WorkflowMachine>;
  sub: ActorSubscription;
  /** Fires RUN_TIMEOUT at the run's deadline; re-armed from the snapshot's deadline after a restore. */
  deadlineTimer: NodeJS.Timeout | null;
  writer: SnapshotWriter;
  log: Logger;
}

export interface Supervisor {
  start(): Promise<void>;
  /** Stop taking work, persist what is pending, stop every actor, release every lock. */
  stop(): Promise<void>;
  /** Look for claimable runs now. */
  claim(): Promise<void>;
  activeRunIds(): string[];
  events$: Observable<RunEvent>;
  /** True while this process holds the workflow's leader lock (the one process that may create scheduled runs). */
  isLeader(): boolean;
  /** Emits on every change of leadership of this process. */
  leadership$: Observable<boolean>;
}

/** Build the supervisor for one process. */
export function createSupervisor(o: SupervisorOptions): Supervisor {
  const live = new Map<string, LiveRun>();
  /** Runs stopped here whose last snapshot is still being written: not claimable until that write settles. */
  const releasing = new Set<string>();
  const events = new Subject<RunEvent>();
  const leadership = new BehaviorSubject<boolean>(false);
  const subs: Subscription[] = [];
  let stopping = false;
  let claiming: Promise<void> | null = null;
  let claimAgain = false;
  let timer: NodeJS.Timeout | null = null;
  let claimFailing = false;

  const emit = (run: LiveRun, type: RunEvent['type'], snap: WorkflowSnapshot, status: RunStatus) =>
    events.next({ runId: run.row.run_id, logicalDate: run.row.logical_date, type, steps: activeSteps(snap.value), status, at: Date.now() });

  const locks = o.locks;
  subs.push(
    locks.lost$.subscribe((err) => {
      // Losing the lock connection loses every run lock: stop executing them; whoever locks them next resumes them.
      o.logger.error({ err: toErrorInfo(err) }, 'lock connection lost: releasing all runs of this process');
      setLeader(false);
      void releaseAll('lock connection lost').then(() => scheduleClaim(1000));
    }),
  );

  /** Stop a live run here without touching its record (it stays resumable), then release its lock. */
  async function drop(run: LiveRun, why: string): Promise<void> {
    if (live.get(run.row.run_id) !== run) return;
    live.delete(run.row.run_id);
    releasing.add(run.row.run_id);
    if (run.deadlineTimer) clearTimeout(run.deadlineTimer);
    run.sub.unsubscribe();
    run.actor.stop();
    try {
      await run.writer.flushed();
      await locks.unlock(run.row.run_id, run.slot, run.lockedOn);
    } finally {
      releasing.delete(run.row.run_id);
    }
    events.next({ runId: run.row.run_id, logicalDate: run.row.logical_date, type: 'released', steps: [], status: 'running', at: Date.now() });
    run.log.info({ why }, 'run released by this process');
  }

  async function releaseAll(why: string): Promise<void> {
    await Promise.all([...live.values()].map((r) => drop(r, why)));
  }

  function launch(row: RunRow, slot: number, lockedOn: LockEpoch): void {
    const log = o.logger.child({ runId: row.run_id, logicalDate: row.logical_date, ...(row.load_id ? { loadId: row.load_id } : {}) });
    const input: WorkflowInput = {
      runId: row.run_id,
      workflowId: row.workflow_id,
      logicalDate: row.logical_date,
      businessDate: row.business_date,
      attempt: row.attempt,
      sensorTimeoutMs: o.sensorTimeoutMs,
      runTimeoutMs: o.runTimeoutMs ?? null,
    };
    const restoring = row.snapshot !== null && row.snapshot !== undefined;
    const actor = restoring
      ? createActor(o.machine, { snapshot: row.snapshot as never, input })
      : createActor(o.machine, { input });
    const writer = createSnapshotWriter({
      pool: o.pool,
      runId: row.run_id,
      owner: o.owner,
      log,
      onCancelled: () => cancelLive(row.run_id),
      onNotOwner: () => void drop(run, 'not owner'),
    });
    const run: LiveRun = { row, slot, lockedOn, actor, sub: undefined as never, deadlineTimer: null, writer, log };
    live.set(row.run_id, run);
    let last = '';
    run.sub = actor.subscribe({
      next: (snap) => {
        const steps = activeSteps(snap.value).join(',');
        if (steps !== last) log.info({ steps: steps || statusOf(snap), loadId: snap.context.loadId ?? undefined }, 'run entered %s', steps || statusOf(snap));
        last = steps;
        const status = statusOf(snap);
        emit(run, 'transition', snap, status);
        // Taken now, not when the write happens: a write that outlives the actor (a retry during an outage, a
        // release) would otherwise store the stopped actor's snapshot, which restores as a dead run.
        void run.writer.write(snap, actor.getPersistedSnapshot()).then(() => {
          if (status !== 'running' && live.get(row.run_id) === run) void finish(run, snap, status);
        });
      },
      error: (err) => {
        // An error nothing in the machine handled: record it so the run is never left half-recorded.
        log.error({ err: toErrorInfo(err) }, 'run actor crashed');
        void failRun(o.pool, row.run_id, { code: 'INTERNAL', message: `run actor crashed: ${toErrorInfo(err).message}` }).finally(() => drop(run, 'actor error'));
      },
    });
    actor.start();
    const deadline = actor.getSnapshot().context.runDeadline;
    if (deadline !== null && deadline !== undefined) {
      run.deadlineTimer = setTimeout(() => {
        run.log.warn('run timeout reached: failing the run');
        actor.send({ type: 'RUN_TIMEOUT' });
      }, Math.min(Math.max(0, deadline - Date.now()), MAX_TIMER_MS));
      run.deadlineTimer.unref();
    }
    const snap = actor.getSnapshot();
    emit(run, restoring ? 'restored' : 'started', snap, statusOf(snap));
    log.info({ restored: restoring, steps: activeSteps(snap.value) }, restoring ? 'run restored from its snapshot' : 'run started');
  }

  async function finish(run: LiveRun, snap: WorkflowSnapshot, status: RunStatus): Promise<void> {
    live.delete(run.row.run_id);
    if (run.deadlineTimer) clearTimeout(run.deadlineTimer);
    run.sub.unsubscribe();
    await locks.unlock(run.row.run_id, run.slot, run.lockedOn);
    emit(run, 'finished', snap, status);
    run.log.info({ status, failure: snap.context.failure ?? undefined }, 'run finished %s', status);
    if (status === 'failed') o.onRunFailed?.(run.row.run_id);
    scheduleClaim(0);
  }

  function setLeader(leader: boolean): void {
    if (leadership.value === leader) return;
    o.logger.info({ owner: o.owner }, leader ? 'this process is now the leader (the one that creates scheduled runs)' : 'this process is no longer the leader');
    leadership.next(leader);
  }

  /** Leadership is a session advisory lock on the lock connection: it dies with the process that holds it. */
  async function tryLead(): Promise<void> {
    if (!leadership.value && (await locks.tryLead())) setLeader(true);
  }

  async function claimOnce(): Promise<void> {
    await tryLead();
    await cancelStale();
    for (const runId of await unfinishedRunIds(o.pool, o.workflowId)) {
      if (stopping) return;
      if (live.has(runId) || releasing.has(runId)) continue;
      if (!(await locks.tryLockRun(runId))) continue;
      const lockedOn = locks.epoch();
      const slot = await locks.trySlot();
      if (slot === null) {
        // Every max_active_runs slot is taken, here or in another process; a finishing run wakes the claim loop.
        await locks.unlock(runId, null);
        return;
      }
      const row = await takeRun(o.pool, runId, o.owner).catch(async (err: unknown) => {
        await locks.unlock(runId, slot);
        throw err;
      });
      if (!row || stopping || !lockedOn || locks.epoch() !== lockedOn) {
        // Finished meanwhile, or the lock connection died while we claimed it (it stays resumable).
        await locks.unlock(runId, slot);
        continue;
      }
      try {
        launch(row, slot, lockedOn);
      } catch (err) {
        // A snapshot this machine cannot read: fail the run with the reason instead of retrying it forever.
        live.delete(runId);
        const info = toErrorInfo(err);
        o.logger.error({ runId, err: info }, 'cannot start or restore run');
        await failRun(o.pool, runId, { code: 'RESTORE_FAILED', message: `cannot restore run ${runId}: ${info.message}` });
        await locks.unlock(runId, slot);
      }
    }
  }

  /** Runs cancelled by an operator: send CANCEL so the machine aborts the step in flight (and its query). */
  function cancelLive(runId: string): void {
    const run = live.get(runId);
    // A run that just ended is still live until its last write settles: there is nothing left to cancel.
    if (!run || run.actor.getSnapshot().status !== 'active') return;
    run.log.info('cancel requested: stopping the run');
    run.actor.send({ type: 'CANCEL' });
  }

  /** Safety net for a missed cancel notification: live runs whose row is no longer queued/running. */
  async function cancelStale(): Promise<void> {
    if (live.size === 0) return;
    for (const runId of await runsNoLongerActive(o.pool, [...live.keys()])) cancelLive(runId);
  }

  async function claim(): Promise<void> {
    if (stopping) return;
    if (claiming) {
      claimAgain = true;
      return claiming;
    }
    claiming = (async () => {
      do {
        claimAgain = false;
        await claimOnce().then(
          () => {
            if (claimFailing) o.logger.info('claiming runs works again');
            claimFailing = false;
          },
          (err: unknown) => {
            // An outage would log every claim tick: warn at its start, then only at debug level.
            if (claimFailing) o.logger.debug({ err: toErrorInfo(err) }, 'claiming runs still fails');
            else o.logger.warn({ err: toErrorInfo(err) }, 'claiming runs failed; will retry');
            claimFailing = true;
          },
        );
      } while (claimAgain && !stopping);
    })().finally(() => {
      claiming = null;
    });
    return claiming;
  }

  function scheduleClaim(ms: number): void {
    if (stopping) return;
    setTimeout(() => void claim(), ms).unref();
  }

  return {
    events$: events.asObservable(),
    leadership$: leadership.asObservable(),
    isLeader: () => leadership.value,
    activeRunIds: () => [...live.keys()],
    claim,
    async start() {
      await locks.connect();
      subs.push(
        o.runNotifications$
          .pipe(filter((n) => n.status === 'queued' && (n.workflow_id === undefined || n.workflow_id === o.workflowId)))
          .subscribe(() => void claim()),
        o.runNotifications$
          .pipe(filter((n) => n.status === 'cancelled' && typeof n.run_id === 'string'))
          .subscribe((n) => cancelLive(n.run_id as string)),
        o.reconnects$.subscribe(() => void claim()),
      );
      const interval = o.claimIntervalMs ?? 5000;
      timer = setInterval(() => void claim(), interval);
      timer.unref();
      await claim();
    },
    async stop() {
      stopping = true;
      if (timer) clearInterval(timer);
      for (const s of subs) s.unsubscribe();
      await claiming?.catch(() => undefined);
      await releaseAll('shutdown');
      setLeader(false);
      leadership.complete();
      events.complete();
    },
  };
}
