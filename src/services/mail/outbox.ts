import type pg from 'pg';
import type { RenderedEmail } from './render.js';

/** What an outbox row is about; with run, attempt and step it is the row's unique key (the deduplication). */
export type MailKind = 'failure' | 'late' | 'recovered' | 'blocked';

/** The identity of one mail: at most one row per run, attempt, kind and step ('' for the whole run). */
export interface MailKey {
  runId: string;
  attempt: number;
  kind: MailKind;
  step?: string;
}

/**
 * Queue a mail in l2flow.email_outbox unless its key is already there (another replica, or this process before a
 * restart, queued it): `queued` says whether this call added it. The dispatcher delivers it.
 */
export async function queueMail(db: pg.Pool, key: MailKey, recipients: string[], mail: RenderedEmail): Promise<{ outboxId: number; queued: boolean }> {
  const k = [key.runId, key.attempt, key.kind, key.step ?? ''];
  const inserted = await db.query<{ id: string }>(
    `insert into l2flow.email_outbox (run_id, attempt, kind, step, recipients, subject, text_body, html_body)
     values ($1, $2, $3, $4, $5, $6, $7, $8) on conflict (run_id, attempt, kind, step) do nothing returning id`,
    [...k, recipients, mail.subject, mail.text, mail.html],
  );
  // A separate statement: its fresh snapshot sees a row that a concurrent insert committed meanwhile.
  const row = inserted.rows[0] ?? (await db.query<{ id: string }>(
    'select id from l2flow.email_outbox where run_id = $1 and attempt = $2 and kind = $3 and step = $4', k)).rows[0];
  if (!row) throw new Error('the outbox row vanished right after it was written');
  return { outboxId: Number(row.id), queued: inserted.rows.length === 1 };
}
