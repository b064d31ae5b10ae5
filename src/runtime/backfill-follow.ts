import { pino } from 'pino';
import { addDays } from '../lib/dates.js';
import { formatDuration } from '../lib/time.js';
import { RUN_CHANNEL } from '../services/sensors/index.js';
import type { L2flow } from './api.js';
import { findBlocked, isFinal, type Blocked } from './backfill.js';
import type { Out } from './cli-io.js';
import { createNotificationHub } from './notification-hub.js';
import type { RunSummary } from './run-store.js';
import { createProgress } from './backfill-progress.js';

/**
 * Follow a backfill's runs to their end. A NOTIFY on l2flow_run about a date of the range wakes the follower at
 * once; a poll every `pollMs` covers a lost notification or a listener that could not connect (a NOTIFY is only a
 * hint: the query decides). The follower never changes a run.
 */

export interface FollowOptions {
  l2: L2flow;
  from: string;
  to: string;
  io: Out;
  /** Stops following (not the runs). */
  signal: AbortSignal;
  /** Fallback poll; default 3 s. */
  pollMs?: number;
  /** Warn that no `l2flow run` seems to be running when no run of the range started within this long; default 30 s. */
  idleWarnMs?: number;
}

/** How following ended: every run finished or is blocked, or the operator interrupted. */
export interface FollowResult {
  interrupted: boolean;
  succeeded: number;
  failed: RunSummary[];
  blocked: Map<string, Blocked>;
  total: number;
  elapsedMs: number;
}

/** Follow the runs of from … to until each has finished or can no longer move, printing progress. */
export async function followBackfill(o: FollowOptions): Promise<FollowResult> {
  const { l2, io } = o;
  const { executionDeltaDays: deltaDays } = l2.config.successEndSensor;
  const startDate = l2.config.startDate;
  const pollMs = o.pollMs ?? 3_000;
  const idleWarnMs = o.idleWarnMs ?? 30_000;
  const startedAt = Date.now();
  // The predecessor of the first date decides whether the chain can start at all.
  const readFrom = addDays(o.from, -deltaDays);
  const inRange = (d: unknown) => typeof d === 'string' && d >= readFrom && d <= o.to;

  // A hint that arrives while the runs are being read must not be lost: it is remembered until the next wait.
  let pending = false;
  let wakeWaiter: (() => void) | undefined;
  const wake = () => {
    pending = true;
    wakeWaiter?.();
  };
  const hub = createNotificationHub({ connectionString: l2.config.connections.state, channels: [RUN_CHANNEL], logger: pino({ level: 'silent' }) });
  const hints = hub.notifications$.subscribe((n) => {
    const p = n.payload as { workflow_id?: unknown; logical_date?: unknown };
    if (p.workflow_id === l2.config.workflowId && inRange(p.logical_date)) wake();
  });
  const reconnects = hub.connected$.subscribe(() => wake());
  // Without a listener the poll still follows, only more slowly.
  await hub.start().catch(() => undefined);
  const onAbort = () => wake();
  o.signal.addEventListener('abort', onAbort);

  const seen = new Map<string, string>(); // logical date → last final status printed
  const progress = createProgress(io, startedAt);
  let warnedIdle = false;
  let lastStartSeenAt = startedAt;
  let result: FollowResult | undefined;
  try {
    for (let first = true; ; first = false) {
      const all = await l2.runsBetween(readFrom, o.to);
      const runs = all.filter((r) => r.logical_date >= o.from);
      const blocked = findBlocked(runs.map((r) => r.logical_date), all, { deltaDays, startDate });
      const failed = runs.filter((r) => r.status === 'failed' || r.status === 'cancelled');
      const succeeded = runs.filter((r) => r.status === 'success').length;
      progress.update({ total: runs.length, succeeded, failed: failed.length, blocked: blocked.size });
      for (const r of runs) {
        if (!isFinal(r.status) || seen.get(r.logical_date) === r.status) continue;
        seen.set(r.logical_date, r.status);
        // Runs that had finished before following began are counted, not announced one by one.
        if (!first) progress.finished(r);
      }
      if (runs.some((r) => r.status === 'running')) lastStartSeenAt = Date.now();
      const open = runs.filter((r) => !isFinal(r.status) && !blocked.has(r.logical_date));
      if (open.length === 0 || o.signal.aborted) {
        result = { interrupted: open.length > 0, succeeded, failed, blocked, total: runs.length, elapsedMs: Date.now() - startedAt };
        break;
      }
      if (!warnedIdle && Date.now() - lastStartSeenAt >= idleWarnMs && open.every((r) => r.status === 'queued')) {
        warnedIdle = true;
        progress.note(
          `no run has started for ${formatDuration(Date.now() - lastStartSeenAt)}; no \`l2flow run\` process seems to be running: start one with \`l2flow run\``,
        );
      }
      if (!pending) {
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, Math.min(pollMs, Math.max(50, idleWarnMs - (Date.now() - lastStartSeenAt))));
          wakeWaiter = () => {
            clearTimeout(timer);
            resolve();
          };
        });
      }
      wakeWaiter = undefined;
      pending = false;
      // Every step of every run notifies: read at most every 100 ms, however many hints arrive.
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  } finally {
    o.signal.removeEventListener('abort', onAbort);
    hints.unsubscribe();
    reconnects.unsubscribe();
    progress.end();
    await hub.stop();
  }
  return result!;
}
