import type pg from 'pg';
import { Subject, filter, type Observable, type Subscription } from 'rxjs';
import type { InspectionEvent, Observer } from 'xstate';
import type { WorkflowInput, WorkflowMachine } from '../machines/workflow.js';
import { toErrorInfo } from '../lib/errors.js';
import { createClaimLoop } from './claim-loop.js';
import { createLeadership } from './leadership.js';
import { startLiveRun, type LiveRun, type LiveRunHost, type RunEvent } from './live-run.js';
import type { Logger } from './logger.js';
import type { LockEpoch, RunLocks } from './run-locks.js';
import { claimLook, failRun, FINAL_STATUSES, runIdsDigest, runsNoLongerActive, takeRun, unfinishedRunIds, type RunRow, type RunStatus } from './run-store.js';

export type { RunEvent } from './live-run.js';

/**
 * The one place where runs are started, restored and stopped. A run is executed by whoever holds its session
 * advisory lock: the lock lives on this process's lock connection, so a crashed process frees its runs with no
 * timeout logic. The supervisor composes the claim loop (which runs to take), the live runs (executing them),
 * leadership, and cancel detection (NOTIFY, with a check of the live runs on every claim round as the safety net).
 */

export interface SupervisorOptions {
  pool: pg.Pool;
  /** The process's lock connection (run locks, max_active_runs slots, leadership); the pool is for everything else. */
  locks: RunLocks;
  machine: WorkflowMachine;
  workflowId: string;
  owner: string;
  /** workflow.maxActiveRuns: when this process runs that many, no slot can be free and a claim round stops. */
  maxActiveRuns?: number;
  sensorTimeoutMs: WorkflowInput['sensorTimeoutMs'];
  /** Whole-run timeout (Airflow's dagrun_timeout), or null. */
  runTimeoutMs?: number | null;
  /** Per-step retries (config `retries`, `steps.<step_id>`). */
  retry?: WorkflowInput['retry'];
  /** Observer of every run actor's inspection events (`--inspect`). */
  inspect?: Observer<InspectionEvent>;
  /** Notifications of channel l2flow_run (queued runs wake the claim loop, cancelled ones stop) and listener reconnects. */
  runNotifications$: Observable<{ status?: unknown; workflow_id?: unknown; run_id?: unknown }>;
  reconnects$: Observable<void>;
  claimIntervalMs?: number;
  logger: Logger;
  /** Called after a run ends failed (the failure mail was queued): lets the mail dispatcher deliver at once. */
  onRunFailed?: (runId: string) => void;
}

export type AdoptOutcome = 'started' | 'created' | 'declined' | 'none';

export interface Supervisor {
  start(): Promise<void>;
  /** Stop taking work, persist what is pending, stop every actor, release every lock. */
  stop(): Promise<void>;
  /** Look for claimable runs now. */
  claim(): Promise<void>;
  /**
   * Create a run already taken by this process and start it, with no NOTIFY hop and no claim look: the run's lock
   * and a max_active_runs slot are taken first (the run id is known before the row exists), then `create(owner)`
   * inserts the row as running and owned by `owner`, and the run starts here. `declined`: no slot free (or the
   * process is stopping, or the run is being claimed here): nothing was created, the caller creates it queued.
   * `none`: `create` created nothing (null). `created`: created, but not started here (the process began stopping or
   * lost its lock session meanwhile): a claim round, here or in another process, takes it.
   */
  adopt(runId: string, create: (owner: string) => Promise<RunRow | null>): Promise<AdoptOutcome>;
  activeRunIds(): string[];
  events$: Observable<RunEvent>;
  /** True while this process holds the workflow's leader lock (the one process that may create scheduled runs). */
  isLeader(): boolean;
  /** Emits on every change of leadership of this process. */
  leadership$: Observable<boolean>;
}

/** The runs executing here by id, with the digest of their ids ({@link claimLook}) kept until the set changes. */
class LiveRuns extends Map<string, LiveRun> {
  #digest: string | null = null;
  override set(runId: string, run: LiveRun): this {
    this.#digest = null;
    return super.set(runId, run);
  }
  override delete(runId: string): boolean {
    this.#digest = null;
    return super.delete(runId);
  }
  override clear(): void {
    this.#digest = null;
    super.clear();
  }
  digest(): string {
    return (this.#digest ??= runIdsDigest(this.keys()));
  }
}

/** Build the supervisor for one process. */
export function createSupervisor(o: SupervisorOptions): Supervisor {
  const { locks, logger } = o;
  const live = new LiveRuns();
  /** Runs stopped here whose last snapshot is still being written: not claimable until that write settles. */
  const releasing = new Set<string>();
  /** Runs being claimed or adopted right now: advisory locks are re-entrant, so one session must not take a run twice. */
  const taking = new Set<string>();
  const events = new Subject<RunEvent>();
  const subs: Subscription[] = [];
  let stopping = false;
  const leadership = createLeadership({ locks, owner: o.owner, logger });
  const loop = createClaimLoop({ round: claimOnce, logger });

  const host: LiveRunHost = {
    pool: o.pool,
    machine: o.machine,
    owner: o.owner,
    logger,
    sensorTimeoutMs: o.sensorTimeoutMs,
    runTimeoutMs: o.runTimeoutMs ?? null,
    retry: o.retry ?? {},
    ...(o.inspect ? { inspect: o.inspect } : {}),
    emit: (e) => events.next(e),
    onEnded(run, snap, status) {
      if (live.get(run.row.run_id) !== run) return;
      live.delete(run.row.run_id);
      void locks.unlock(run.row.run_id, run.slot, run.lockedOn).then(() => {
        run.log.info({ status, failure: snap.context.failure ?? undefined }, 'run finished %s', status);
        if (status === 'failed') o.onRunFailed?.(run.row.run_id);
        loop.later(0);
      });
    },
    onLost: (run, why) => void drop(run, why),
  };

  /** Stop a live run here without touching its record (it stays resumable), then release its lock. */
  async function drop(run: LiveRun, why: string): Promise<void> {
    if (live.get(run.row.run_id) !== run) return;
    live.delete(run.row.run_id);
    releasing.add(run.row.run_id);
    candidates = null; // it stays unfinished: the next round looks again
    try {
      await run.stop();
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

  subs.push(
    locks.lost$.subscribe((err) => {
      // The lock connection broke and did not come back in time: every run lock is gone. Stop executing them;
      // whoever locks them next resumes them.
      logger.error({ err: toErrorInfo(err) }, 'lock connection lost: releasing all runs of this process');
      leadership.lose();
      void releaseAll('lock connection lost').then(() => loop.later(1000));
    }),
    locks.relocked$.subscribe((gone) => {
      // Back after a break, with every lock taken again except those another process took in the gap.
      logger.warn({ lost: gone }, 'lock connection re-established; its runs keep running here');
      if (gone.leader) leadership.lose();
      for (const run of [...live.values()]) {
        // A pool slot taken elsewhere in the gap may hold another run's step now: be safe, release them all.
        if (gone.named.length > 0 || gone.runs.includes(run.row.run_id) || gone.slots.includes(run.slot)) {
          void drop(run, 'its lock was taken by another process while the lock connection was down');
        }
      }
    }),
  );

  /**
   * The unfinished runs of the last look, oldest logical date first, less those known to have finished since (here,
   * or elsewhere by their NOTIFY): a round woken by a finished run tries them without looking again (one statement
   * less per claim; a backfill claims once per finished run). A queued run's NOTIFY (a new or cleared run may come
   * before them), a sweep (the fallback interval, a listener reconnect) or a lock session lost looks again. Only an
   * order of candidates: the run's lock and the take decide, as with a fresh look.
   */
  let candidates: Set<string> | null = null;
  const forget = (runId: string) => void candidates?.delete(runId);

  async function claimOnce({ sweep }: { sweep: boolean }): Promise<void> {
    await leadership.tryLead();
    if (sweep || candidates === null) candidates = await look(sweep);
    for (const runId of [...candidates]) {
      if (stopping) return;
      if (live.has(runId) || releasing.has(runId) || taking.has(runId)) continue;
      // Each live run here holds its own slot: with all of them here, the slot statement could only say "none free"
      // (a backfill's claim after each finished run asked it once more for the next queued date, on the lock
      // connection the running chain link's pool slot waits on). A finishing run wakes the loop again.
      if (o.maxActiveRuns !== undefined && live.size >= o.maxActiveRuns) return;
      taking.add(runId);
      try {
        const { locked, slot } = await locks.tryLockRunWithSlot(runId);
        if (!locked) continue;
        const lockedOn = locks.epoch();
        // Every max_active_runs slot is taken, here or in another process (the run's lock was given back with the
        // look); a finishing run wakes the claim loop.
        if (slot === null) return;
        const row = await takeRun(o.pool, runId, o.owner).catch(async (err: unknown) => {
          await locks.unlock(runId, slot);
          throw err;
        });
        if (!row) forget(runId); // finished meanwhile
        if (!row || stopping || !lockedOn || locks.epoch() !== lockedOn) {
          // Finished meanwhile, or the lock session was lost while we claimed it (it stays resumable).
          await locks.unlock(runId, slot);
          continue;
        }
        forget(runId); // executed here now: a live run is never a candidate
        await begin(row, slot, lockedOn);
      } finally {
        taking.delete(runId);
      }
    }
  }

  /** Start (or restore) a locked, taken run here; a snapshot this machine cannot read fails the run with the reason. */
  async function begin(row: RunRow, slot: number, lockedOn: LockEpoch): Promise<void> {
    try {
      live.set(row.run_id, startLiveRun(host, row, slot, lockedOn));
    } catch (err) {
      // A snapshot this machine cannot read: fail the run with the reason instead of retrying it forever.
      const info = toErrorInfo(err);
      logger.error({ runId: row.run_id, err: info }, 'cannot start or restore run');
      await failRun(o.pool, row.run_id, { code: 'RESTORE_FAILED', message: `cannot restore run ${row.run_id}: ${info.message}` });
      await locks.unlock(row.run_id, slot);
    }
  }

  async function adopt(runId: string, create: (owner: string) => Promise<RunRow | null>): Promise<AdoptOutcome> {
    if (stopping || live.has(runId) || releasing.has(runId) || taking.has(runId)) return 'declined';
    taking.add(runId);
    try {
      const { locked, slot } = await locks.tryLockRunWithSlot(runId);
      // Held elsewhere (a process claiming a run of that date), or every slot taken (the lock was given back).
      if (!locked || slot === null) return 'declined';
      const lockedOn = locks.epoch();
      const row = await create(o.owner).catch(async (err: unknown) => {
        await locks.unlock(runId, slot, lockedOn);
        throw err;
      });
      if (!row) {
        await locks.unlock(runId, slot, lockedOn);
        return 'none';
      }
      if (stopping || !lockedOn || locks.epoch() !== lockedOn) {
        // Created but not to be run here: it stays resumable, and the next claim round (here or elsewhere) takes it.
        await locks.unlock(runId, slot, lockedOn);
        loop.later(0);
        return 'created';
      }
      await begin(row, slot, lockedOn);
      return 'started';
    } finally {
      taking.delete(runId);
    }
  }

  /**
   * The runs to try, in one statement of one row while the runs executing here are exactly those running under this
   * owner. Otherwise (a run of this owner let go here, or finished elsewhere while its NOTIFY was missed) run by run:
   * on a sweep (the fallback interval, a listener reconnect) the live runs no longer active are cancelled first, the
   * safety net for a missed cancel NOTIFY; not on the rounds a queued run's NOTIFY asked for.
   */
  async function look(sweep: boolean): Promise<Set<string>> {
    const { others, mine } = await claimLook(o.pool, o.workflowId, o.owner);
    if (mine === live.digest()) return new Set(others);
    if (sweep) await cancelStale();
    return new Set(await unfinishedRunIds(o.pool, o.workflowId));
  }

  /** Safety net for a missed cancel notification: live runs whose row is no longer queued/running. */
  async function cancelStale(): Promise<void> {
    if (live.size === 0) return;
    for (const runId of await runsNoLongerActive(o.pool, [...live.keys()])) live.get(runId)?.cancel();
  }

  return {
    events$: events.asObservable(),
    leadership$: leadership.leadership$,
    isLeader: leadership.isLeader,
    activeRunIds: () => [...live.keys()],
    claim: () => loop.claim({ sweep: true }),
    adopt,
    async start() {
      await locks.connect();
      subs.push(
        o.runNotifications$
          .pipe(filter((n) => n.status === 'queued' && (n.workflow_id === undefined || n.workflow_id === o.workflowId)))
          .subscribe(() => {
            candidates = null; // it may come before the runs of the last look
            void loop.claim();
          }),
        o.runNotifications$
          .pipe(filter((n) => FINAL_STATUSES.includes(n.status as RunStatus) && typeof n.run_id === 'string'))
          .subscribe((n) => forget(n.run_id as string)),
        o.runNotifications$
          // Cancelled, or marked success/failed by an operator while it ran here: stop it (the write of its
          // cancelled state is refused, so the operator's status stays).
          .pipe(filter((n) => ['cancelled', 'success', 'failed'].includes(n.status as string) && typeof n.run_id === 'string'))
          .subscribe((n) => live.get(n.run_id as string)?.cancel()),
        o.reconnects$.subscribe(() => void loop.claim({ sweep: true })),
      );
      loop.start(o.claimIntervalMs ?? 5000);
      await loop.claim();
    },
    async stop() {
      stopping = true;
      for (const s of subs) s.unsubscribe();
      await loop.stop();
      await releaseAll('shutdown');
      leadership.complete();
      events.complete();
    },
  };
}
