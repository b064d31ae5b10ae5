import type pg from 'pg';
import { addDays } from '../lib/dates.js';
import { prepared, quoteQualified, separateState, type Databases } from '../services/db/index.js';
import type { DateWindow } from './config.js';
import { createRuns, RUN_COLUMNS, type RunRow } from './run-store.js';

/** l2flow.schedule_state and l2flow.skipped_date: where the cron schedule got to and what it passed over. All SQL of schedules lives here. */

export type SkipReason = 'catchup_false' | 'disabled';

/** One schedule's progress: taken under a transaction-scoped lock, so two deciders (an old and a new leader) take turns. */
export async function lockScheduleState(client: pg.ClientBase, workflowId: string, schedule: string): Promise<string | null> {
  await client.query(`select pg_advisory_xact_lock(hashtext('l2flow.schedule:' || $1 || ':' || $2))`, [workflowId, schedule]);
  const { rows } = await client.query<{ d: string }>(
    `select to_char(last_logical_date, 'YYYY-MM-DD') as d from l2flow.schedule_state where workflow_id = $1 and schedule = $2`,
    [workflowId, schedule],
  );
  return rows[0]?.d ?? null;
}

/** Record the last logical date a schedule decided, in the caller's transaction. */
export async function saveScheduleState(client: pg.ClientBase, workflowId: string, schedule: string, lastLogicalDate: string): Promise<void> {
  await client.query(
    `insert into l2flow.schedule_state (workflow_id, schedule, last_logical_date) values ($1, $2, $3)
     on conflict (workflow_id, schedule) do update set last_logical_date = excluded.last_logical_date, updated_at = now()`,
    [workflowId, schedule, lastLogicalDate],
  );
}

/** The newest run's logical date up to `notAfter` (a run queued for a far future date must not hide the gap before it), or null. */
export async function latestRunDate(db: pg.Pool | pg.ClientBase, workflowId: string, notAfter: string): Promise<string | null> {
  const { rows } = await db.query<{ d: string | null }>(
    `select to_char(max(logical_date), 'YYYY-MM-DD') as d from l2flow.run where workflow_id = $1 and logical_date <= $2`,
    [workflowId, notAfter],
  );
  return rows[0]?.d ?? null;
}

/** Record dates a schedule passed over; dates that already have a run, or a skip, are left alone. Returns how many were recorded. */
export async function recordSkipped(
  client: pg.ClientBase, workflowId: string, schedule: string, dates: string[], reason: SkipReason,
): Promise<number> {
  if (dates.length === 0) return 0;
  const { rowCount } = await client.query(
    `insert into l2flow.skipped_date (workflow_id, logical_date, schedule, reason)
     select $1, d, $3, $4 from unnest($2::date[]) as d
      where not exists (select 1 from l2flow.run r where r.workflow_id = $1 and r.logical_date = d)
     on conflict (workflow_id, logical_date) do nothing`,
    [workflowId, dates, schedule, reason],
  );
  return rowCount ?? 0;
}

/**
 * Queue a run (triggered by `flag`) for each logical date (business date + 1) inside `window` whose flag row exists
 * and that has no run yet, business dates from `since` on (only `only`, when given): the look and the insert in one
 * statement, for one notified date or a scan after a gap. Returns the logical dates whose run it created, oldest first.
 */
export async function createFlaggedRuns(
  db: Databases, o: { flagTable: string; flagCode: string; workflowId: string; window: DateWindow; since: string; only?: string },
): Promise<string[]> {
  const flagged = flaggedDates(o.flagTable);
  const values = [o.flagCode, o.since, o.window.startDate, o.window.endDate, o.workflowId, o.only ?? null];
  if (!separateState(db)) {
    const { rows } = await db.state.query<{ d: string }>(
      `insert into l2flow.run (run_id, workflow_id, logical_date, business_date, triggered_by)
       select 'flag__' || to_char(x.d, 'YYYY-MM-DD'), $5, x.d, x.d - 1, 'flag'
         from (${flagged}
                 and not exists (select 1 from l2flow.run r where r.workflow_id = $5 and r.logical_date = f.bussines_date + 1)) x
        order by x.d
       on conflict (workflow_id, logical_date) do nothing
       returning to_char(logical_date, 'YYYY-MM-DD') as d`,
      values,
    );
    return rows.map((r) => r.d).sort();
  }
  // The flags are in the warehouse, the runs in l2flow's own database: look there, create here.
  const { rows } = await db.dwh.query<{ d: string }>(
    `select to_char(x.d, 'YYYY-MM-DD') as d from (${flagged} and $5::text is not null) x order by 1`,
    values,
  );
  return createRuns(db.state, { workflowId: o.workflowId, dates: rows.map((r) => r.d), triggeredBy: 'flag' });
}

/** The flagged business dates + 1 (placeholders: $1 code, $2 since, $3 start, $4 end date, $6 only that date). */
const flaggedDates = (flagTable: string) => `select distinct f.bussines_date + 1 as d from ${quoteQualified(flagTable)} f
     where f.flag_cd = $1 and f.bussines_date >= greatest($2::date, $3::date - 1)
       and ($4::date is null or f.bussines_date <= $4::date - 1) and ($6::date is null or f.bussines_date = $6::date)`;

/**
 * The run of the flag for business date `businessDate`, created already taken by `owner` (status running): the
 * caller holds the run's lock and a max_active_runs slot, so nobody claims it in between. One statement when the
 * flag table and the runs share a database (the flag look and the insert), else a look in the warehouse first.
 * Null when the flag row is not there (or is outside the window) or the date has a run already: then nothing
 * was created. A returned row proves that the flag row was committed when the run was created.
 */
export async function createFlaggedRunTaken(
  db: Databases,
  o: { flagTable: string; flagCode: string; workflowId: string; window: DateWindow; businessDate: string; owner: string },
): Promise<RunRow | null> {
  const logicalDate = addDays(o.businessDate, 1);
  const values = [o.flagCode, o.businessDate, o.window.startDate, o.window.endDate, o.workflowId, o.businessDate, o.owner];
  if (!separateState(db)) {
    const { rows } = await db.state.query<RunRow>({
      ...prepared('l2flow_flagged_run', `insert into l2flow.run (run_id, workflow_id, logical_date, business_date, triggered_by, status, owner, started_at)
       select 'flag__' || to_char(x.d, 'YYYY-MM-DD'), $5, x.d, x.d - 1, 'flag', 'running', $7, now()
         from (${flaggedDates(o.flagTable)}
                 and not exists (select 1 from l2flow.run r where r.workflow_id = $5 and r.logical_date = f.bussines_date + 1)) x
       on conflict (workflow_id, logical_date) do nothing returning ${RUN_COLUMNS}`),
      values,
    });
    return rows[0] ?? null;
  }
  // The flags are in the warehouse, the runs in l2flow's own database: look there, create here.
  const { rows: found } = await db.dwh.query<{ d: string }>(
    `select to_char(x.d, 'YYYY-MM-DD') as d from (${flaggedDates(o.flagTable)} and $5::text is not null) x`, values.slice(0, 6));
  if (found[0]?.d !== logicalDate) return null;
  const { rows } = await db.state.query<RunRow>(
    `insert into l2flow.run (run_id, workflow_id, logical_date, business_date, triggered_by, status, owner, started_at)
     values ('flag__' || $3, $1, $3::date, $2::date, 'flag', 'running', $4, now())
     on conflict (workflow_id, logical_date) do nothing returning ${RUN_COLUMNS}`,
    [o.workflowId, o.businessDate, logicalDate, o.owner],
  );
  return rows[0] ?? null;
}

/** Skipped dates that still have no run: how many, by reason, and the newest few (for `l2flow status`). */
export interface SkippedSummary {
  count: number;
  byReason: Partial<Record<SkipReason, number>>;
  latest: { logicalDate: string; reason: SkipReason }[];
}

/** The summary of skipped dates without a run; the README's "countable in SQL" query is the same. */
export async function skippedSummary(db: pg.Pool, workflowId: string, latest = 5): Promise<SkippedSummary> {
  const { rows } = await db.query<{ reason: SkipReason; n: number; latest: string[] }>(
    `select s.reason, count(*)::int as n, (array_agg(to_char(s.logical_date, 'YYYY-MM-DD') order by s.logical_date desc))[1:$2] as latest
       from l2flow.skipped_date s
      where s.workflow_id = $1
        and not exists (select 1 from l2flow.run r where r.workflow_id = s.workflow_id and r.logical_date = s.logical_date)
      group by s.reason`,
    [workflowId, latest],
  );
  const byReason: SkippedSummary['byReason'] = {};
  for (const r of rows) byReason[r.reason] = r.n;
  const newest = rows.flatMap((r) => r.latest.map((logicalDate) => ({ logicalDate, reason: r.reason })));
  newest.sort((a, b) => b.logicalDate.localeCompare(a.logicalDate));
  return { count: rows.reduce((n, r) => n + r.n, 0), byReason, latest: newest.slice(0, latest) };
}
