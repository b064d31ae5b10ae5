import type pg from 'pg';
import type { Observable, Subscription } from 'rxjs';
import { addDays, dateInZone } from '../lib/dates.js';
import { toErrorInfo } from '../lib/errors.js';
import type { ScheduleConfig } from './config.js';
import type { Logger } from './logger.js';
import type { FlagSeeds } from '../services/sensors/index.js';
import type { RunRow } from './run-store.js';
import { createFlaggedRunTaken, createFlaggedRuns, latestRunDate } from './schedule-store.js';

/**
 * schedule.onFlag on the leader: the flag for business date B creates the run of logical date B + 1. A notification
 * (the flag sensor's channel) names B, and the flag table decides; a scan finds flags that have no run yet when
 * this process becomes the leader, after every reconnect of the listener (notifications in the gap are lost) and on
 * the flag sensor's fallback poll. Runs are keyed by date, so a hint and a scan meeting on one date are harmless.
 *
 * A notified date's run is handed to this process's supervisor when it has a free max_active_runs slot: created
 * already taken and started here (no NOTIFY hop, no claim look), its sensor passing on the creating statement's look
 * at the flag row. Other processes still get the run's NOTIFY. Without a free slot the run is created queued.
 */

export interface FlagSchedule {
  begin(): void;
  /** Stop; resolves once the work in flight ended. */
  end(): Promise<void>;
  /** Look for flags without a run now; resolves with the logical dates whose run it created. */
  scan(): Promise<string[]>;
}

/** Build the onFlag schedule of one process; nothing runs until begin(). */
export function createFlagSchedule(o: {
  pool: pg.Pool;
  /** The warehouse, where the flag table is; the same pool object when l2flow's tables live there. */
  dwh: pg.Pool;
  workflowId: string;
  timezone: string;
  onFlag: ScheduleConfig['onFlag'];
  flagTable: string;
  flagCode: string;
  /** Business dates the flag notifications name (already filtered to the flag code). */
  hints$: Observable<string>;
  reconnects$: Observable<void>;
  pollIntervalMs: number;
  logger: Logger;
  now: () => Date;
  /** The supervisor's handoff (see Supervisor.adopt); without it every run is created queued. */
  adopt?: (runId: string, create: (owner: string) => Promise<RunRow | null>) => Promise<'started' | 'created' | 'declined' | 'none'>;
  /** Where a run created by the statement that read its flag is marked for the flag sensor. */
  seeds?: FlagSeeds;
}): FlagSchedule {
  const { onFlag, workflowId } = o;
  const log = o.logger.child({ module: 'scheduler', schedule: 'onFlag' });
  const query = { flagTable: o.flagTable, flagCode: o.flagCode, workflowId, window: onFlag };
  let subs: Subscription[] = [];
  let poll: NodeJS.Timeout | null = null;
  /** One piece of work at a time: hints and scans queue behind each other instead of racing for the same dates. */
  let tail: Promise<unknown> = Promise.resolve();

  function queue<T>(what: string, fn: () => Promise<T>, fallback: T): Promise<T> {
    const p = tail.then(fn).catch((err: unknown) => {
      log.warn({ err: toErrorInfo(err) }, `onFlag ${what} failed; the next scan (at most ${o.pollIntervalMs / 1000} s) tries again`);
      return fallback;
    });
    tail = p;
    return p;
  }

  /** Create the runs of the flagged dates without one (the look and the insert in one statement when both are in one database). */
  async function create(since: string, only: string | undefined, why: string, t0: number): Promise<string[]> {
    const created = await createFlaggedRuns({ state: o.pool, dwh: o.dwh }, { ...query, since, ...(only ? { only } : {}) });
    for (const d of created) log.info({ logicalDate: d, businessDate: addDays(d, -1), why, ms: Date.now() - t0 }, 'run created by the flag for %s', addDays(d, -1));
    return created;
  }

  /** Create the notified date's run taken and start it here; null when the supervisor declined (create it queued). */
  async function handOver(businessDate: string, logicalDate: string, t0: number): Promise<string[] | null> {
    if (!o.adopt) return null;
    const runId = `flag__${logicalDate}`;
    try {
      const outcome = await o.adopt(runId, async (owner) => {
        const row = await createFlaggedRunTaken({ state: o.pool, dwh: o.dwh }, { ...query, businessDate, owner });
        if (!row) return null;
        // Before the run's own lines ("run started" …): it starts right after this returns.
        log.info({ logicalDate, businessDate, why: 'notification', ms: Date.now() - t0, takenHere: true }, 'run created by the flag for %s', businessDate);
        // Read by the sensor when the actor starts, right after this returns; removed below if it was not.
        o.seeds?.add(row.run_id);
        return row;
      }).catch((err: unknown) => {
        // The lock connection or the insert failed: create the run queued the usual way (a run created taken
        // meanwhile is found by the claim loop's next round; creating is by date, so nothing is created twice).
        log.warn({ err: toErrorInfo(err), logicalDate }, 'onFlag could not start the run here; creating it queued');
        return 'declined' as const;
      });
      if (outcome === 'declined') return null;
      if (outcome === 'none') return [];
      if (outcome === 'created') log.info({ logicalDate }, 'the run created by the flag was not started here (stopping, or the lock session was lost); a claim round takes it');
      return [logicalDate];
    } finally {
      o.seeds?.delete(runId);
    }
  }

  function onHint(businessDate: string): void {
    const t0 = Date.now();
    const logicalDate = addDays(businessDate, 1);
    if (logicalDate < onFlag.startDate || (onFlag.endDate !== null && logicalDate > onFlag.endDate)) {
      log.info({ businessDate, startDate: onFlag.startDate, endDate: onFlag.endDate }, 'flag outside the onFlag dates: no run');
      return;
    }
    void queue('run creation', async () => (await handOver(businessDate, logicalDate, t0)) ?? create(businessDate, businessDate, 'notification', t0), []);
  }

  const schedule: FlagSchedule = {
    begin() {
      if (subs.length > 0) return;
      log.info({ startDate: onFlag.startDate, endDate: onFlag.endDate }, 'onFlag schedule started on this process (leader)');
      subs = [o.hints$.subscribe(onHint), o.reconnects$.subscribe(() => void schedule.scan())];
      poll = setInterval(() => void schedule.scan(), o.pollIntervalMs);
      poll.unref();
      void schedule.scan();
    },
    async end() {
      for (const s of subs) s.unsubscribe();
      subs = [];
      if (poll) clearInterval(poll);
      poll = null;
      await tail;
    },
    scan() {
      const t0 = Date.now();
      return queue('scan', async () => {
        // Bounded: from lookbackDays before the newest run (a flag for today makes tomorrow's run), or the start date.
        const newest = await latestRunDate(o.pool, workflowId, addDays(dateInZone(o.timezone, o.now()), 1));
        const since = newest === null ? addDays(onFlag.startDate, -1) : addDays(newest, -1 - onFlag.lookbackDays);
        return create(since, undefined, 'scan', t0);
      }, []);
    },
  };
  return schedule;
}
