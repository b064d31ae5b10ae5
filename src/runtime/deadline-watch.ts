import type pg from 'pg';
import { addDays, zonedInstant } from '../lib/dates.js';
import { toErrorInfo } from '../lib/errors.js';
import { createRateLimitedWarn } from '../lib/log.js';
import { formatDuration } from '../lib/time.js';
import { queueMail, renderNotice, type MailKind, type NoticeInput } from '../services/mail/index.js';
import { previousRunStates } from '../services/sensors/index.js';
import type { Config } from './config.js';
import type { Logger } from './logger.js';
import { describeWaits, type WaitingRun } from './waits.js';

/**
 * Late, blocked and recovered notices for the workflow's runs, whoever executes them and whether anyone does yet:
 * a queued run nobody claimed is as late as a running one. The leader looks every round; deadlines are computed
 * from the configuration and the logical date, so they survive restarts, and the outbox's unique key
 * (run, attempt, kind, step) makes sure no replica and no restart queues a notice twice.
 */

export interface DeadlineWatch {
  start(): void;
  stop(): Promise<void>;
  /** One round now (tests, and the start of leadership). */
  tick(): Promise<void>;
}

interface UnfinishedRun extends WaitingRun {
  attempt: number;
  created_at: Date;
}

interface Notice {
  run: UnfinishedRun;
  kind: MailKind & NoticeInput['kind'];
  step?: string;
  extra: Pick<NoticeInput, 'expectedBy' | 'waitedFor'>;
}

/** Build the watch of one process; it acts only while `isLeader()`. */
export function createDeadlineWatch(o: {
  pool: pg.Pool; config: Config; isLeader: () => boolean; logger: Logger; intervalMs: number; onQueued: () => void;
}): DeadlineWatch {
  const { pool, config } = o;
  const log = o.logger.child({ module: 'deadline-watch' });
  const warn = createRateLimitedWarn(log);
  const tz = config.timezone;
  const stepTimes = Object.entries(config.deadlines.steps) as Array<[string, string]>;
  const blockedAfterMs = config.successEndSensor.blockedMailAfterMs;
  let timer: NodeJS.Timeout | undefined;
  let running: Promise<void> = Promise.resolve();

  /** Deadlines that passed for a run created before them: a backfill of an old date was never expected on time. */
  function lateNotices(run: UnfinishedRun, stepDone: (step: string) => boolean, now: number): Notice[] {
    const out: Notice[] = [];
    const due = (time: string) => {
      const at = zonedInstant(run.logical_date, time, tz);
      return at <= now && run.created_at.getTime() < at;
    };
    if (config.deadlines.expectedBy && due(config.deadlines.expectedBy)) {
      out.push({ run, kind: 'late', extra: { expectedBy: `${run.logical_date} ${config.deadlines.expectedBy} (${tz})` } });
    }
    for (const [step, time] of stepTimes) {
      if (due(time) && !stepDone(step)) out.push({ run, kind: 'late', step, extra: { expectedBy: `${run.logical_date} ${time} (${tz})` } });
    }
    return out;
  }

  async function round(): Promise<void> {
    if (!o.isLeader()) return;
    const now = Date.now();
    const { rows: runs } = await pool.query<UnfinishedRun>(
      `select run_id, workflow_id, logical_date::text, business_date::text, status, current_step, attempt, created_at
         from l2flow.run where workflow_id = $1 and status in ('queued', 'running')`, [config.workflowId]);
    const steps = stepTimes.length > 0 || blockedAfterMs !== null ? await stepRows(runs) : new Map<string, Map<string, { status: string; started_at: Date }>>();
    const notices = runs.flatMap((r) => lateNotices(r, (s) => steps.get(r.run_id)?.get(s)?.status === 'success', now));
    if (blockedAfterMs !== null) notices.push(...(await blockedNotices(runs, steps, now, blockedAfterMs)));
    notices.push(...(await recoveredNotices()));
    const fresh = await notQueuedYet(notices);
    if (fresh.length === 0) return;
    const waits = await describeWaits(pool, config, fresh.map((n) => n.run));
    let queued = 0;
    for (const n of fresh) {
      const mail = renderNotice({
        kind: n.kind, workflowId: n.run.workflow_id, runId: n.run.run_id, logicalDate: n.run.logical_date, businessDate: n.run.business_date,
        attempt: n.run.attempt, status: n.run.status, currentStep: n.run.current_step, waitingOn: waits.get(n.run.run_id)?.text, ...n.extra,
        ...(n.step ? { step: n.step } : {}),
      });
      const r = await queueMail(pool, { runId: n.run.run_id, attempt: n.run.attempt, kind: n.kind, step: n.step ?? '' }, config.email.recipients, mail);
      if (r.queued) {
        queued += 1;
        log.info({ runId: n.run.run_id, logicalDate: n.run.logical_date, kind: n.kind, step: n.step, outboxId: r.outboxId }, `${n.kind} mail queued`);
      }
    }
    if (queued > 0) o.onQueued();
  }

  /** The current attempt's steps of the given runs. */
  async function stepRows(runs: UnfinishedRun[]): Promise<Map<string, Map<string, { status: string; started_at: Date }>>> {
    const out = new Map<string, Map<string, { status: string; started_at: Date }>>();
    if (runs.length === 0) return out;
    const { rows } = await pool.query<{ run_id: string; step: string; status: string; started_at: Date }>(
      `select s.run_id, s.step, s.status, s.started_at from l2flow.step s join l2flow.run r on r.run_id = s.run_id and r.attempt = s.attempt
        where s.run_id = any($1::text[])`, [runs.map((r) => r.run_id)]);
    for (const r of rows) {
      if (!out.has(r.run_id)) out.set(r.run_id, new Map());
      out.get(r.run_id)!.set(r.step, r);
    }
    return out;
  }

  /** Runs in wait_for_success_end behind a failed (or cancelled) run for longer than blockedMailAfterSeconds. */
  async function blockedNotices(runs: UnfinishedRun[], steps: Map<string, Map<string, { started_at: Date }>>, now: number, afterMs: number): Promise<Notice[]> {
    const waiting = runs.filter((r) => r.status === 'running' && r.current_step === 'wait_for_success_end');
    if (waiting.length === 0) return [];
    const delta = config.successEndSensor.executionDeltaDays;
    const states = await previousRunStates(pool, config.workflowId, waiting.map((r) => addDays(r.logical_date, -delta)));
    return waiting.flatMap((run) => {
      const prev = states.find((s) => s.logicalDate === addDays(run.logical_date, -delta));
      if (!prev || (prev.status !== 'failed' && prev.status !== 'cancelled')) return [];
      // Blocked since the later of: this run started waiting, the previous run failed.
      const since = Math.max(steps.get(run.run_id)?.get('wait_for_success_end')?.started_at.getTime() ?? now, prev.finishedAt?.getTime() ?? 0);
      return now - since >= afterMs ? [{ run, kind: 'blocked' as const, extra: { waitedFor: formatDuration(now - since) } }] : [];
    });
  }

  /** Succeeded runs that got a late mail for this attempt and no recovered mail yet. */
  async function recoveredNotices(): Promise<Notice[]> {
    const { rows } = await pool.query<UnfinishedRun>(
      `select distinct r.run_id, r.workflow_id, r.logical_date::text, r.business_date::text, r.status, r.current_step, r.attempt, r.created_at
         from l2flow.email_outbox o join l2flow.run r on r.run_id = o.run_id and r.attempt = o.attempt
        where o.kind = 'late' and r.workflow_id = $1 and r.status = 'success'
          and not exists (select 1 from l2flow.email_outbox x where x.run_id = o.run_id and x.attempt = o.attempt and x.kind = 'recovered')`,
      [config.workflowId]);
    return rows.map((run) => ({ run, kind: 'recovered' as const, extra: {} }));
  }

  /** Drop notices already in the outbox, so a run late for hours costs one lookup per round, not a render and insert. */
  async function notQueuedYet(notices: Notice[]): Promise<Notice[]> {
    if (notices.length === 0) return [];
    const { rows } = await pool.query<{ k: string }>(
      `select run_id || '|' || attempt || '|' || kind || '|' || step as k from l2flow.email_outbox where run_id = any($1::text[])`,
      [[...new Set(notices.map((n) => n.run.run_id))]]);
    const have = new Set(rows.map((r) => r.k));
    return notices.filter((n) => !have.has(`${n.run.run_id}|${n.run.attempt}|${n.kind}|${n.step ?? ''}`));
  }

  const tick = () => {
    // Rounds never overlap: a slow database makes them later, not concurrent.
    running = running.then(round).catch((err: unknown) => warn('round', { err: toErrorInfo(err) }, 'deadline watch round failed; the next round retries'));
    return running;
  };

  const enabled = config.deadlines.expectedBy !== null || stepTimes.length > 0 || blockedAfterMs !== null;
  return {
    start() {
      if (!enabled || timer) return;
      timer = setInterval(() => void tick(), o.intervalMs);
      timer.unref();
    },
    async stop() {
      clearInterval(timer);
      timer = undefined;
      await running;
    },
    tick,
  };
}
