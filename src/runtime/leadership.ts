import { BehaviorSubject, type Observable } from 'rxjs';
import type { Logger } from './logger.js';
import type { RunLocks } from './run-locks.js';

/**
 * Leadership of the workflow across processes: a session advisory lock on the lock connection, so it dies with the
 * process that holds it. The leader is the one process that may create scheduled runs.
 */
export interface Leadership {
  /** Take the lead if nobody holds it. */
  tryLead(): Promise<void>;
  /** The lock is gone (its session was lost, or this process stops). */
  lose(): void;
  isLeader(): boolean;
  /** Emits on every change of leadership of this process. */
  leadership$: Observable<boolean>;
  complete(): void;
}

/** Build the leadership of one process. */
export function createLeadership(o: { locks: RunLocks; owner: string; logger: Logger }): Leadership {
  const leading = new BehaviorSubject<boolean>(false);
  const set = (leader: boolean) => {
    if (leading.value === leader) return;
    o.logger.info({ owner: o.owner }, leader ? 'this process is now the leader (the one that creates scheduled runs)' : 'this process is no longer the leader');
    leading.next(leader);
  };
  return {
    async tryLead() {
      if (!leading.value && (await o.locks.tryLead())) set(true);
    },
    lose: () => set(false),
    isLeader: () => leading.value,
    leadership$: leading.asObservable(),
    complete() {
      set(false);
      leading.complete();
    },
  };
}
