/** Longest delay a Node timer takes; setTimeout/setInterval fire at once for anything longer. */
export const MAX_TIMER_MS = 2_147_483_647;

/** Wait `ms`, ending early (without error) when `signal` fires; the timer never keeps the process alive alone. */
export function abortableSleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve(); // a fired signal never calls a listener added later
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    timer.unref?.();
    signal?.addEventListener('abort', done, { once: true });
  });
}

/** "850 ms", "42 s", "1h 5m 3s": durations as operators read them. */
export function formatDuration(ms: number): string {
  if (ms < 1_000) return `${Math.max(0, Math.round(ms))} ms`;
  const s = Math.round(ms / 1_000);
  if (s < 60) return `${s} s`;
  const h = Math.floor(s / 3_600);
  const m = Math.floor((s % 3_600) / 60);
  return h > 0 ? `${h}h ${m}m ${s % 60}s` : `${m}m ${s % 60}s`;
}
