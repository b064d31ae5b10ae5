import { toErrorInfo } from '../lib/errors.js';
import type { Logger } from './logger.js';

/**
 * The claim loop: one round at a time, asked for by NOTIFY, listener reconnects, finished runs and a fallback
 * interval. Requests during a round coalesce into one more round; a failing round warns once per outage.
 */
export interface ClaimLoop {
  /** Run a round now (or once more after the current one); resolves when no round is asked for. */
  claim(): Promise<void>;
  /** Ask for a round in `ms`. */
  later(ms: number): void;
  start(intervalMs: number): void;
  /** No more rounds; resolves once the current one ended. */
  stop(): Promise<void>;
}

/** Build the loop around one claim round. */
export function createClaimLoop(o: { round: () => Promise<void>; logger: Logger }): ClaimLoop {
  let stopping = false;
  let claiming: Promise<void> | null = null;
  let again = false;
  let failing = false;
  let timer: NodeJS.Timeout | null = null;

  async function rounds(): Promise<void> {
    do {
      again = false;
      await o.round().then(
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
    claim() {
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
      timer = setInterval(() => void loop.claim(), intervalMs);
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
