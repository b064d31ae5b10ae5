import type pg from 'pg';
import type { Observable, Subscription } from 'rxjs';
import type { Config } from './config.js';
import { createCronSchedule, type CronRound, type CronSchedule } from './cron-schedule.js';
import { createFlagSchedule, type FlagSchedule } from './flag-schedule.js';
import type { Logger } from './logger.js';

export type { CronRound } from './cron-schedule.js';

/**
 * Runs that start themselves: schedule.cron and schedule.onFlag, executed only by the leader. They start when this
 * process becomes the leader and stop when it loses the lead; their progress lives in the database, so the next
 * leader neither skips nor doubles a date. Both are leader-only although creating a run twice is harmless: one
 * process doing the work saves every follower the same queries, and the new leader's first round (and scan)
 * covers whatever came due while nobody led.
 */

export interface Scheduler {
  start(): void;
  /** Stop both schedules; resolves once their work in flight ended. */
  stop(): Promise<void>;
  /** When schedule.cron next decides a date, while this process leads; null otherwise (no cron, follower, past its end). */
  nextCronAt(): Date | null;
  /** Decide the cron schedule's due dates now, whoever leads (the schedule's lock serializes deciders); null without cron. */
  runCronNow(): Promise<CronRound | null>;
  /** Look for flags without a run now; the logical dates whose run it created ([] without onFlag). */
  scanFlags(): Promise<string[]>;
}

/** Build the scheduler of one process from the configuration; nothing runs until start() and leadership. */
export function createScheduler(o: {
  pool: pg.Pool;
  /** The warehouse, where the flag table is; the same pool object when l2flow's tables live there. */
  dwh: pg.Pool;
  config: Config;
  leadership$: Observable<boolean>;
  /** Business dates named by flag notifications for the sensor's flag code. */
  flagHints$: Observable<string>;
  reconnects$: Observable<void>;
  logger: Logger;
  /** The wall clock; tests move it. */
  now?: () => Date;
  /** onFlag hands a notified date's run to the supervisor (see Supervisor.adopt), marking it for the flag sensor. */
  adopt?: Parameters<typeof createFlagSchedule>[0]['adopt'];
  seeds?: Parameters<typeof createFlagSchedule>[0]['seeds'];
}): Scheduler {
  const { config } = o;
  const now = o.now ?? (() => new Date());
  const common = { pool: o.pool, workflowId: config.workflowId, timezone: config.timezone, logger: o.logger, now };
  const cron: CronSchedule | null = config.schedule.cron && createCronSchedule({ ...common, cron: config.schedule.cron });
  const flag: FlagSchedule | null = !config.schedule.onFlag.enabled
    ? null
    : createFlagSchedule({
        ...common,
        dwh: o.dwh,
        onFlag: config.schedule.onFlag,
        flagTable: config.flagSensor.flagTable,
        flagCode: config.flagSensor.flagCode,
        hints$: o.flagHints$,
        reconnects$: o.reconnects$,
        // The flag sensor's fallback poll: the same table, the same cadence.
        pollIntervalMs: config.flagSensor.pokeIntervalMs,
        ...(o.adopt ? { adopt: o.adopt } : {}),
        ...(o.seeds ? { seeds: o.seeds } : {}),
      });
  let sub: Subscription | null = null;
  /** Leadership changes apply in order: a begin never overtakes the end before it. */
  let change: Promise<void> = Promise.resolve();

  return {
    start() {
      if (sub || (!cron && !flag)) return;
      sub = o.leadership$.subscribe((leader) => {
        change = change.then(async () => {
          if (leader) {
            cron?.begin();
            flag?.begin();
          } else {
            await Promise.all([cron?.end(), flag?.end()]);
          }
        });
      });
    },
    async stop() {
      sub?.unsubscribe();
      sub = null;
      await change;
      await Promise.all([cron?.end(), flag?.end()]);
    },
    nextCronAt: () => cron?.nextAt() ?? null,
    runCronNow: async () => (cron ? cron.runDue() : null),
    scanFlags: async () => (flag ? flag.scan() : []),
  };
}
