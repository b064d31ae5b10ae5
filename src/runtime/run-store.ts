import { createHash } from 'node:crypto';
import type pg from 'pg';
import type { StepId, StepRecord, StepTryRecord } from '../machines/workflow.js';
import type { ErrorCode, ErrorInfo } from '../lib/errors.js';
import { ASYNC_COMMIT, prepared } from '../services/db/index.js';

/** l2flow.run and l2flow.step: the durable record of every run. All SQL about runs lives here. */

/** Who created a run: `l2flow trigger`, schedule.cron, or schedule.onFlag. */
export type TriggeredBy = 'manual' | 'scheduled' | 'flag' | 'backfill';
export type RunStatus = 'queued' | 'running' | 'success' | 'failed' | 'cancelled';
export const FINAL_STATUSES: readonly RunStatus[] = ['success', 'failed', 'cancelled'];

export interface RunRow {
  run_id: string;
  workflow_id: string;
  logical_date: string;
  business_date: string;
  status: RunStatus;
  attempt: number;
  load_id: string | null;
  current_step: string | null;
  error: ErrorInfo | null;
  snapshot: unknown;
  /** Where a cleared run's current attempt starts (null: at the first step). */
  start_at: StepId[] | null;
  owner: string | null;
  triggered_by: string;
  created_at: Date;
  started_at: Date | null;
  finished_at: Date | null;
}

export interface StepRow {
  step: string;
  attempt: number;
  /** 1, then +1 per retry of the step within the attempt. */
  try_number: number;
  status: string;
  /** When this failed try is tried again; null otherwise. */
  retry_at: Date | null;
  started_at: Date;
  finished_at: Date | null;
  error: ErrorInfo | null;
}

/** Every column of a run as RunRow reads it (dates as text). */
export const RUN_COLUMNS = `run_id, workflow_id, logical_date::text, business_date::text, status, attempt, load_id::text,
  current_step, error, snapshot, start_at, owner, triggered_by, created_at, started_at, finished_at`;

/** Queue a run for a logical date; an existing run for that date is returned unchanged (`created: false`). */
export async function createRun(
  db: pg.Pool | pg.ClientBase,
  r: { workflowId: string; logicalDate: string; businessDate: string; triggeredBy: TriggeredBy },
): Promise<{ run: RunRow; created: boolean }> {
  const inserted = await db.query<RunRow>(
    `insert into l2flow.run (run_id, workflow_id, logical_date, business_date, triggered_by)
     values ($1, $2, $3, $4, $5) on conflict (workflow_id, logical_date) do nothing returning ${RUN_COLUMNS}`,
    [`${r.triggeredBy}__${r.logicalDate}`, r.workflowId, r.logicalDate, r.businessDate, r.triggeredBy],
  );
  if (inserted.rows[0]) return { run: inserted.rows[0], created: true };
  const existing = await getRunByDate(db, r.workflowId, r.logicalDate);
  return { run: existing!, created: false };
}

/** The run of a logical date, or null. */
export async function getRunByDate(db: pg.Pool | pg.ClientBase, workflowId: string, logicalDate: string): Promise<RunRow | null> {
  const { rows } = await db.query<RunRow>(`select ${RUN_COLUMNS} from l2flow.run where workflow_id = $1 and logical_date = $2`, [workflowId, logicalDate]);
  return rows[0] ?? null;
}

/** Which runs listRuns returns: a page of them, optionally within logical dates from … to and of some statuses. */
export interface RunFilter {
  limit: number;
  offset?: number;
  from?: string;
  to?: string;
  statuses?: RunStatus[];
}

/** The newest runs first. */
export async function listRuns(db: pg.Pool, workflowId: string, f: RunFilter): Promise<RunRow[]> {
  const { rows } = await db.query<RunRow>(
    `select ${RUN_COLUMNS} from l2flow.run
      where workflow_id = $1 and ($2::date is null or logical_date >= $2) and ($3::date is null or logical_date <= $3)
        and ($4::text[] is null or status = any($4))
      order by logical_date desc limit $5 offset $6`,
    [workflowId, f.from ?? null, f.to ?? null, f.statuses?.length ? f.statuses : null, f.limit, f.offset ?? 0],
  );
  return rows;
}

/** Unfinished runs, oldest logical date first: the candidates a supervisor may claim. */
export async function unfinishedRunIds(db: pg.Pool, workflowId: string): Promise<string[]> {
  const { rows } = await db.query<{ run_id: string }>({
    ...prepared('l2flow_unfinished', `select run_id from l2flow.run where workflow_id = $1 and status in ('queued', 'running') order by logical_date`),
    values: [workflowId],
  });
  return rows.map((r) => r.run_id);
}

/** What a claim round's look returns: see {@link claimLook}. */
export interface ClaimLook {
  /** Unfinished runs that are not running under this owner (queued, or running elsewhere), oldest logical date first. */
  others: string[];
  /** {@link runIdsDigest} of the runs running under this owner. */
  mine: string;
}

/**
 * A claim round's look, sized by the runs to claim rather than by the runs executing here: with 1,000 runs parked in a
 * sensor, the look is one row (no 1,000 ids sent or returned every round). The caller compares `mine` with the
 * digest of the runs it executes: equal, each of them is still running under this owner and no run of this owner is
 * left unexecuted; different (a run finished elsewhere whose NOTIFY was missed, a run let go here), it looks run by
 * run with {@link runsNoLongerActive} and {@link unfinishedRunIds}. The digest is SHA-256 (not MD5: FIPS servers
 * refuse it) of the ids in byte order, newline-separated; a server whose encoding is not UTF-8 never matches, which
 * only costs the run-by-run look.
 */
export async function claimLook(db: pg.Pool, workflowId: string, owner: string): Promise<ClaimLook> {
  const { rows } = await db.query<{ others: string[]; mine: string }>({
    ...prepared('l2flow_claim_look', `select
        coalesce(array_agg(run_id order by logical_date) filter (where status = 'queued' or owner is distinct from $2), '{}') as others,
        encode(sha256(convert_to(coalesce(string_agg(run_id, E'\\n' order by run_id collate "C")
          filter (where status = 'running' and owner = $2), ''), 'UTF8')), 'hex') as mine
      from l2flow.run where workflow_id = $1 and status in ('queued', 'running')`),
    values: [workflowId, owner],
  });
  return { others: rows[0]?.others ?? [], mine: rows[0]?.mine ?? '' };
}

const NEWLINE = Buffer.from('\n');

/** The digest {@link claimLook} computes of this owner's running runs, of the given ids. */
export function runIdsDigest(runIds: Iterable<string>): string {
  const sorted = [...runIds].map((id) => Buffer.from(id, 'utf8')).sort(Buffer.compare);
  return createHash('sha256').update(Buffer.concat(sorted.flatMap((b, i) => (i === 0 ? [b] : [NEWLINE, b])))).digest('hex');
}

/** Mark a locked run as ours and running; null when it finished meanwhile (then it must not be executed). */
export async function takeRun(db: pg.Pool, runId: string, owner: string): Promise<RunRow | null> {
  const { rows } = await db.query<RunRow>({
    // Asynchronous commit: a claim a crash loses leaves the run to be claimed again (this process's locks die with the server).
    ...prepared('l2flow_take', `update l2flow.run set owner = $2, status = 'running', started_at = coalesce(started_at, now()), updated_at = now()
      where run_id = $1 and status in ('queued', 'running') and ${ASYNC_COMMIT} is not null returning ${RUN_COLUMNS}`),
    values: [runId, owner],
  });
  return rows[0] ?? null;
}

export interface RunProgress {
  status: RunStatus;
  currentStep: string | null;
  loadId: number | null;
  error: ErrorInfo | null;
  snapshot: unknown;
  attempt: number;
  steps: Partial<Record<StepId, StepRecord>>;
  /** Earlier failed tries of retried steps (absent in snapshots written before retries existed). */
  tries?: StepTryRecord[];
}

/**
 * Write a run's snapshot, status and step history in one statement, only while `owner` still owns the run.
 * `written` (kept by one run's writer across its writes) makes it send only the step rows that changed.
 * Returns false when the run is no longer ours (another process took it over, or an operator cancelled it).
 */
export async function saveProgress(db: pg.Pool, runId: string, owner: string, p: RunProgress, written?: Map<string, string>): Promise<boolean> {
  const row = (step: string, rec: StepRecord) => ({
    step,
    try_number: rec.try ?? 1,
    status: rec.status,
    started_at: new Date(rec.startedAt).toISOString(),
    finished_at: rec.endedAt ? new Date(rec.endedAt).toISOString() : null,
    error: rec.error ?? null,
    retry_at: rec.retryAt ? new Date(rec.retryAt).toISOString() : null,
  });
  // One row per try: the earlier failed tries, then each step's current one (never the same try twice).
  const all = [...(p.tries ?? []).map((t) => row(t.step, t)), ...Object.entries(p.steps).map(([step, rec]) => row(step, rec))];
  // With `written` (the rows this writer stored before, by key): only the rows that changed since are sent, so a
  // transition upserts the one or two step rows it touched instead of every step of the run.
  const keyed = all.map((r) => ({ r, key: `${p.attempt}:${r.step}:${r.try_number}`, json: JSON.stringify(r) }));
  const steps = written ? keyed.filter((k) => written.get(k.key) !== k.json).map((k) => k.r) : all;
  const final = FINAL_STATUSES.includes(p.status);
  const { rows } = await db.query<{ saved: boolean }>({
    ...prepared('l2flow_save_progress', SAVE_PROGRESS),
    values: [runId, owner, p.status, p.currentStep, p.loadId, p.error, JSON.stringify(p.snapshot), final, p.attempt, JSON.stringify(steps)],
  });
  const saved = rows[0]?.saved ?? false;
  if (saved && written) for (const k of keyed) written.set(k.key, k.json);
  return saved;
}

/** saveProgress's one statement: the run row (only while `owner` owns it) and the changed step rows. */
const SAVE_PROGRESS = `with run as (
       update l2flow.run
          set status = $3, current_step = $4, load_id = coalesce(load_id, $5), error = coalesce($6, error), snapshot = $7,
              snapshot_version = snapshot_version + 1, updated_at = now(),
              finished_at = case when $8 then coalesce(finished_at, now()) else null end
        where run_id = $1 and owner = $2
          and (status in ('queued', 'running') or (status = 'cancelled' and $3 = 'cancelled'))
        returning run_id),
     steps as (
       insert into l2flow.step (run_id, step, attempt, try_number, status, started_at, finished_at, error, retry_at)
       select run.run_id, s.step, $9, s.try_number, s.status, s.started_at, s.finished_at, s.error, s.retry_at
         from run, jsonb_to_recordset($10::jsonb)
           as s(step text, try_number int, status text, started_at timestamptz, finished_at timestamptz, error jsonb, retry_at timestamptz)
       on conflict (run_id, step, attempt, try_number) do update
         set status = excluded.status, started_at = excluded.started_at, finished_at = excluded.finished_at, error = excluded.error,
             retry_at = excluded.retry_at
       returning 1)
     select exists (select 1 from run) as saved,
            -- A running run's snapshot commits asynchronously (replayed from the memos if a crash loses it); a final status waits for the disk.
            case when $8 then null else ${ASYNC_COMMIT} end as async_commit`;

/** True when the run is still owned by `owner` but an operator cancelled it. */
export async function cancelledHere(db: pg.Pool, runId: string, owner: string): Promise<boolean> {
  const { rowCount } = await db.query(`select 1 from l2flow.run where run_id = $1 and owner = $2 and status = 'cancelled'`, [runId, owner]);
  return (rowCount ?? 0) > 0;
}

/** Of the given runs, those no longer queued or running (finished elsewhere, or cancelled by an operator). */
export async function runsNoLongerActive(db: pg.Pool, runIds: string[]): Promise<string[]> {
  const { rows } = await db.query<{ run_id: string }>(
    `select run_id from l2flow.run where run_id = any($1) and status not in ('queued', 'running')`,
    [runIds],
  );
  return rows.map((r) => r.run_id);
}

/**
 * Cancel the run of a logical date: it is marked `cancelled` at once; the process executing it (notified through
 * the run trigger) stops its step and cancels its warehouse query. Returns the run as it was before, or null.
 */
export async function cancelRun(db: pg.Pool | pg.ClientBase, workflowId: string, logicalDate: string): Promise<{ run: RunRow; cancelled: boolean } | null> {
  // The row as it was before the update, so the caller can say what was cancelled.
  const { rows } = await db.query<RunRow>(
    `with before as (
       select ${RUN_COLUMNS} from l2flow.run
        where workflow_id = $1 and logical_date = $2 and status in ('queued', 'running') for update),
     cancelled as (
       update l2flow.run r set status = 'cancelled', finished_at = now(), updated_at = now(),
              error = jsonb_build_object('code', 'CANCELLED', 'message', 'cancelled by an operator')
         from before where r.run_id = before.run_id)
     select * from before`,
    [workflowId, logicalDate],
  );
  if (rows[0]) return { run: rows[0], cancelled: true };
  const run = await getRunByDate(db, workflowId, logicalDate);
  return run ? { run, cancelled: false } : null;
}

/** Close a run that cannot be executed (for example an unreadable snapshot), whoever owned it. */
export async function failRun(db: pg.Pool, runId: string, error: ErrorInfo & { code: ErrorCode }): Promise<void> {
  await db.query(
    `update l2flow.run set status = 'failed', error = $2, finished_at = now(), updated_at = now()
      where run_id = $1 and status in ('queued', 'running')`,
    [runId, error],
  );
}

/** Step history of a run: every try of every attempt (earlier attempts' rows stay), by attempt, then start order. */
export async function listSteps(db: pg.Pool, runId: string): Promise<StepRow[]> {
  const { rows } = await db.query<StepRow>(
    `select step, attempt, try_number, status, started_at, finished_at, error, retry_at from l2flow.step
      where run_id = $1 order by attempt, started_at, step, try_number`,
    [runId],
  );
  return rows;
}

/** A run without its snapshot: what following many runs (backfill) needs, cheap to read for thousands of dates. */
export type RunSummary = Omit<RunRow, 'snapshot' | 'owner' | 'workflow_id'>;

/** The runs of logical dates `from` … `to` (inclusive), oldest first, without snapshots. */
export async function runsBetween(db: pg.Pool, workflowId: string, from: string, to: string): Promise<RunSummary[]> {
  const { rows } = await db.query<RunSummary>(
    `select run_id, logical_date::text, business_date::text, status, attempt, load_id::text, current_step, error,
            triggered_by, created_at, started_at, finished_at
       from l2flow.run where workflow_id = $1 and logical_date between $2 and $3 order by logical_date`,
    [workflowId, from, to],
  );
  return rows;
}

/** Each step's latest row (its latest try, in the latest attempt that ran it) of each run, by run id, in start order. */
export async function stepsOfRuns(db: pg.Pool, runs: Pick<RunRow, 'run_id' | 'attempt'>[]): Promise<Map<string, StepRow[]>> {
  const { rows } = await db.query<StepRow & { run_id: string }>(
    // Each step's latest try in any attempt up to the current one: a cleared run re-runs only some steps, and the
    // others keep the outcome of the attempt that ran them.
    `select * from (
       select distinct on (s.run_id, s.step) s.run_id, s.step, s.attempt, s.try_number, s.status, s.started_at, s.finished_at, s.error, s.retry_at
         from l2flow.step s join unnest($1::text[], $2::int[]) as r(run_id, attempt) on s.run_id = r.run_id and s.attempt <= r.attempt
        order by s.run_id, s.step, s.attempt desc, s.try_number desc) latest
      order by run_id, started_at, step`,
    [runs.map((r) => r.run_id), runs.map((r) => r.attempt)],
  );
  const byRun = new Map<string, StepRow[]>(runs.map((r) => [r.run_id, []]));
  for (const { run_id, ...step } of rows) byRun.get(run_id)?.push(step);
  return byRun;
}

/** Queue a run for each of `dates` that has none (one statement); returns the dates that got a new run. */
export async function createRuns(
  db: pg.Pool | pg.ClientBase,
  r: { workflowId: string; dates: string[]; triggeredBy: TriggeredBy },
): Promise<string[]> {
  // to_char, not ::text: a server with DateStyle 'SQL, DMY' would print 01/12/2024.
  const { rows } = await db.query<{ d: string }>(
    `insert into l2flow.run (run_id, workflow_id, logical_date, business_date, triggered_by)
     select $3 || '__' || to_char(d, 'YYYY-MM-DD'), $1, d, d - 1, $3 from unnest($2::date[]) as d
     order by d
     on conflict (workflow_id, logical_date) do nothing returning to_char(logical_date, 'YYYY-MM-DD') as d`,
    [r.workflowId, r.dates, r.triggeredBy],
  );
  return rows.map((x) => x.d).sort();
}
