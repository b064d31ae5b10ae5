import type { Logger } from 'pino';

/**
 * A warn() that logs the first event per key, then at most one per interval carrying the number of events
 * it left out (`suppressed`), so a flood of bad payloads or failing queries cannot flood the log.
 */
export function createRateLimitedWarn(
  logger: Logger,
  intervalMs = 60_000,
): (key: string, obj: Record<string, unknown>, msg: string) => void {
  const state = new Map<string, { lastAt: number; suppressed: number }>();
  return (key, obj, msg) => {
    const now = Date.now();
    const s = state.get(key);
    if (s && now - s.lastAt < intervalMs) {
      s.suppressed += 1;
      return;
    }
    logger.warn(s?.suppressed ? { ...obj, suppressed: s.suppressed } : obj, msg);
    state.set(key, { lastAt: now, suppressed: 0 });
  };
}
