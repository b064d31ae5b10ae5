import type pg from 'pg';

/** l2flow.audit: who triggered, cancelled, cleared or marked which runs, when and why. */

export type AuditAction = 'trigger' | 'cancel' | 'clear' | 'mark';

export interface AuditEntry {
  action: AuditAction;
  workflowId: string;
  logicalDates: string[];
  runIds: string[];
  reason?: string | null;
  /** The OS user for the CLI; the API's caller names itself. */
  actor: string;
  details?: Record<string, unknown>;
}

export interface AuditRow {
  id: string;
  at: Date;
  action: AuditAction;
  logical_dates: string[];
  run_ids: string[];
  reason: string | null;
  actor: string;
  details: Record<string, unknown>;
}

/** Record an action, in the caller's transaction when given a client, so the action and its record commit together. */
export async function writeAudit(db: pg.Pool | pg.ClientBase, e: AuditEntry): Promise<void> {
  await db.query(
    `insert into l2flow.audit (action, workflow_id, logical_dates, run_ids, reason, actor, details)
     values ($1, $2, $3::date[], $4, $5, $6, $7::jsonb)`,
    [e.action, e.workflowId, e.logicalDates, e.runIds, e.reason ?? null, e.actor, JSON.stringify(e.details ?? {})],
  );
}

/** The audit entries that concern a logical date, oldest first. */
export async function listAudit(db: pg.Pool, workflowId: string, logicalDate: string): Promise<AuditRow[]> {
  const { rows } = await db.query<AuditRow>(
    `select id::text, at, action, logical_dates::text[] as logical_dates, run_ids, reason, actor, details from l2flow.audit
      where workflow_id = $1 and logical_dates @> array[$2::date] order by at, id`,
    [workflowId, logicalDate],
  );
  return rows;
}
