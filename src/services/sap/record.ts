import { STATUS_CODES } from 'node:http';
import type pg from 'pg';
import { dateInZone } from '../../lib/dates.js';
import { StepError, toErrorInfo, type ErrorCode } from '../../lib/errors.js';
import { ASYNC_COMMIT, ownerOf, prepared } from '../db/index.js';
import { sapPayload } from './payload.js';
import { retryableOutcome, sapFailure, type TryOutcome } from './outcome.js';
import type { StepContext } from '../types.js';

const STORED_EXCERPT_CHARS = 1000;
/** Appended to a failure replayed from l2flow.sap_send instead of sending again. */
const REPLAY_NOTE = ' (recorded before a restart; clear the step to send again)';
const SAP_ERROR_CODES: ReadonlySet<string> = new Set<ErrorCode>(['SAP_HTTP_ERROR', 'SAP_TIMEOUT', 'SAP_UNREACHABLE', 'SAP_BAD_RESPONSE']);

/** One row of l2flow.sap_send: the payload of a run attempt and how sending it went. */
export interface SendRow {
  payload: Record<string, unknown>;
  status: 'sending' | 'sent' | 'failed';
  tries: number;
  http_status: number | null;
  response_excerpt: string | null;
  /** The error a 'failed' row ended with (sql/003); null on rows failed before that migration. */
  error: unknown;
}

/** The `error` column of a 'failed' row: what the step threw, without the replay note. */
interface RecordedError {
  code: ErrorCode;
  message: string;
  retryable: boolean;
  details?: Record<string, unknown>;
}

/** The send record of the SAP step, one l2flow.sap_send row per Idempotency-Key. */
export interface SendRecord {
  /**
   * The record of `key`, or (none yet) the record written now: the view counted into its payload, its first try
   * already counted (tries 1, status sending), `created` true. With one database one statement (the view is counted
   * only when the row is written); with a separate state database a read, the count and the insert.
   */
  open(ctx: StepContext & { loadId: number }, key: string): Promise<{ row: SendRow; created: boolean }>;
  /**
   * Count a new try and mark the row 'sending'; resolves to the tries recorded, undefined when the row is gone.
   * Refused (NOT_OWNER) when `ctx.owner` no longer owns the run: no try is sent.
   */
  startTry(ctx: StepContext, key: string): Promise<number | undefined>;
  /** Record a try's outcome; a 'failed' row keeps the error thrown, so a resumed step can throw it again. */
  record(key: string, outcome: TryOutcome, status: SendRow['status'], error?: StepError): Promise<void>;
  /**
   * The failure a 'failed' row recorded, thrown again instead of repeating a request SAP already refused. Rows
   * failed before sql/003 have no stored error; it is rebuilt from their last answer.
   */
  recordedFailure(row: SendRow, key: string): StepError;
}

function recordedError(value: unknown): RecordedError | undefined {
  if (!value || typeof value !== 'object' || Array.isArray(value)) return undefined;
  const { code, message, retryable, details } = value as Record<string, unknown>;
  if (typeof code !== 'string' || !SAP_ERROR_CODES.has(code) || typeof message !== 'string') return undefined;
  const known = details !== null && typeof details === 'object' && !Array.isArray(details);
  return { code: code as ErrorCode, message, retryable: retryable === true, ...(known ? { details: details as Record<string, unknown> } : {}) };
}

/** The last outcome of a row failed before sql/003, as far as http_status and response_excerpt tell it. */
function legacyOutcome(row: SendRow): TryOutcome {
  const excerpt = row.response_excerpt ?? '';
  if (row.http_status !== null) {
    return { kind: 'http', status: row.http_status, statusText: STATUS_CODES[row.http_status] ?? '', excerpt, retryAfterMs: undefined };
  }
  // record() stores a non-HTTP outcome as `<kind>: <detail>`.
  const timeout = /^timeout: (no answer within (\d+) ms)$/.exec(excerpt);
  if (timeout) return { kind: 'timeout', ms: Number(timeout[2]), detail: timeout[1]! };
  return { kind: 'unreachable', detail: excerpt.replace(/^unreachable: /, '') || 'no answer recorded' };
}

/**
 * The l2flow.sap_send record. `view` (quoted) is counted for calc_rows, `timezone` and `now` give calc_date;
 * `where` names the endpoint in rebuilt errors and `scrub` removes credentials from replayed messages.
 */
export function createSendRecord(deps: {
  /** `pool`: l2flow.sap_send; `dwh`: the warehouse holding the view (the same pool object when l2flow's tables live there). */
  pool: pg.Pool; dwh: pg.Pool; view: string; timezone: string; now: () => Date; where: string; scrub: (text: string) => string;
}): SendRecord {
  const { pool, dwh, view, where, scrub } = deps;

  const columns = 'payload, status, tries, http_status, response_excerpt, error';
  const payloadOf = (ctx: StepContext, calcRows: string) =>
    sapPayload({ calcDate: dateInZone(deps.timezone, deps.now()), calcRows, logicalDate: ctx.logicalDate });

  async function read(key: string): Promise<SendRow | undefined> {
    const { rows } = await pool.query<SendRow>(`select ${columns} from l2flow.sap_send where idempotency_key = $1`, [key]);
    return rows[0];
  }

  /** Separate databases: the view is the warehouse's, the record l2flow's. Undefined when a record already existed. */
  async function create(ctx: StepContext & { loadId: number }, key: string): Promise<SendRow | undefined> {
    const { rows } = await dwh.query<{ n: string }>(`select count(*) as n from ${view}`);
    const payload = payloadOf(ctx, String(rows[0]?.n ?? '0'));
    const { rows: created } = await pool.query<SendRow>(
      `insert into l2flow.sap_send (idempotency_key, run_id, logical_date, load_id, payload, status, tries)
       select $1, $2, $3, $4, $5::jsonb, 'sending', 1 where l2flow.assert_owner($2, $6) on conflict do nothing
       returning ${columns}`,
      [key, ctx.runId, ctx.logicalDate, ctx.loadId, JSON.stringify(payload), ownerOf(ctx)],
    );
    return created[0];
  }

  // One database: the record, else written now; the view's count is a subquery of the insert's target list, so it
  // is evaluated only when the row is written (no existing record). calc_rows: count(*) as text, as `create` stores it.
  // $6 the owner asserted (sql/008), found or written: a process whose run was taken over neither records nor sends.
  const openSql = `with existing as (select ${columns}, false as created from l2flow.sap_send
                      where idempotency_key = $1 and l2flow.assert_owner($2, $6)),
    written as (
      insert into l2flow.sap_send (idempotency_key, run_id, logical_date, load_id, payload, status, tries)
      select $1, $2, $3, $4, jsonb_set($5::jsonb, '{calc_rows}', to_jsonb((select count(*) from ${view})::text)), 'sending', 1
       where not exists (select 1 from existing) and l2flow.assert_owner($2, $6)
      on conflict do nothing
      returning ${columns}, true as created)
    select * from existing union all select * from written`;

  return {
    async open(ctx, key) {
      if (pool === dwh) {
        const { rows } = await pool.query<SendRow & { created: boolean }>({ ...prepared('l2flow_sap_open', openSql),
          values: [key, ctx.runId, ctx.logicalDate, ctx.loadId, JSON.stringify(payloadOf(ctx, '0')), ownerOf(ctx)] });
        const found = rows[0];
        if (found) {
          const { created, ...row } = found;
          return { row, created };
        }
      } else {
        const existing = await read(key);
        if (existing) return { row: existing, created: false };
        const row = await create(ctx, key);
        if (row) return { row, created: true };
      }
      // Written by someone else meanwhile.
      const row = await read(key);
      if (!row) throw new StepError('INTERNAL', `the l2flow.sap_send row for ${key} vanished right after it was written`);
      return { row, created: false };
    },

    async startTry(ctx, key) {
      const { rows } = await pool.query<{ tries: number }>({
        ...prepared('l2flow_sap_try', `update l2flow.sap_send set tries = tries + 1, status = 'sending'
          where idempotency_key = $1 and l2flow.assert_owner($2, $3) returning tries`),
        values: [key, ctx.runId, ownerOf(ctx)],
      });
      return rows[0]?.tries;
    },

    async record(key, outcome, status, error) {
      const excerpt = outcome.kind === 'http' ? outcome.excerpt : `${outcome.kind}: ${outcome.detail}`;
      const stored = error ? JSON.stringify(toErrorInfo(error)) : null; // retryable included: a replay keeps it
      await pool.query({
        // "sent" commits asynchronously: lost in a crash, the resumed step sends again under the same key (SAP
        // deduplicates), as for a crash before it was written; the next step's synchronous commit flushes it anyway.
        ...prepared('l2flow_sap_record', `update l2flow.sap_send set http_status = $2, response_excerpt = $3, status = $4, error = $5::jsonb,
                sent_at = case when $4 = 'sent' then now() else sent_at end
          where idempotency_key = $1
          returning case when $4 = 'sent' then ${ASYNC_COMMIT} end as async_commit`),
        values: [key, outcome.kind === 'http' ? outcome.status : null, excerpt.slice(0, STORED_EXCERPT_CHARS), status, stored],
      });
    },

    recordedFailure(row, key) {
      let stored = recordedError(row.error);
      if (!stored) {
        const outcome = legacyOutcome(row);
        const err = sapFailure(outcome, { where, key, tries: row.tries, retryable: retryableOutcome(outcome) });
        stored = { code: err.code, message: err.message, retryable: err.retryable, ...(err.details ? { details: err.details } : {}) };
      }
      return new StepError(stored.code, `${scrub(stored.message)}${REPLAY_NOTE}`, {
        retryable: stored.retryable,
        ...(stored.details ? { details: stored.details } : {}),
      });
    },
  };
}
