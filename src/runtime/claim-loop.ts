import { toErrorInfo } from '../lib/errors.js';
import type { Logger } from './logger.js';

/**
 * The claim loop: one round at a time, asked for by NOTIFY, listener reconnects, finished runs and a fallback
 * interval. Requests during a round coalesce into one more round; a failing round warns once per outage.
 * A round is a sweep (`sweep: true`: the safety nets for missed notifications run too) when the fallback interval
 * or a listener reconnect asked for it; rounds woken by a NOTIFY or a finished run only claim.
 */
export interface ClaimLoop {
  /** Run a round now (or once more after the current one); resolves when no round is asked for. */
  claim(o?: { sweep?: boolean }): Promise<void>;
  /** Ask for a round in `ms`. */
  later(ms: number): void;
  start(intervalMs: number): void;
  /** No more rounds; resolves once the current one ended. */
  stop(): Promise<void>;
}

/** Build the loop around one claim round. */
export function createClaimLoop(o: { round: (r: { sweep: boolean }) => Promise<void>; logger: Logger }): ClaimLoop {
  let stopping = false;
  let claiming: Promise<void> | null = null;
  let again = false;
  /** A sweep was asked for and has not started yet. */
  let sweep = true;
  let failing = false;
  let timer: NodeJS.Timeout | null = null;

  async function rounds(): Promise<void> {
    do {
      again = false;
      const r = { sweep };
      sweep = false;
      await o.round(r).then(
        () => {
          if (failing) o.logger.info('claiming runs works again');
          failing = false;
        },
        (err: unknown) => {
          // An outage would log every claim tick: warn at its start, then only at debug level.
          if (failing) o.logger.debug({ err: toErrorInfo(err) }, 'claiming runs still fails');
          else o.logger.warn({ err: toErrorInfo(err) }, 'claiming runs failed; will retry');
          failing = true;
        },
      );
    } while (again && !stopping);
  }

  const loop: ClaimLoop = {
    claim(c) {
      if (c?.sweep) sweep = true;
      if (stopping) return Promise.resolve();
      if (claiming) {
        again = true;
        return claiming;
      }
      claiming = rounds().finally(() => {
        claiming = null;
      });
      return claiming;
    },
    later(ms) {
      if (!stopping) setTimeout(() => void loop.claim(), ms).unref();
    },
    start(intervalMs) {
      timer = setInterval(() => void loop.claim({ sweep: true }), intervalMs);
      timer.unref();
    },
    async stop() {
      stopping = true;
      if (timer) clearInterval(timer);
      await claiming?.catch(() => undefined);
    },
  };
  return loop;
}
