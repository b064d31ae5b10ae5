import { STATUS_CODES } from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import type pg from 'pg';
import { Agent, request } from 'undici';
import { StepError, throwIfAborted, toErrorInfo, type StepErrorCode } from './errors.js';
import { authorizationHeader, credentialScrubber, sapUrlForHumans, type SapEndpoint } from './sap-connection.js';
import { quoteQualified } from './sql.js';
import type { Logger, StepContext, StepFn } from './types.js';

export { describeSapEndpoint, parseSapConnection, type SapAuth, type SapEndpoint } from './sap-connection.js';

const STEP = 'send_flg_to_sap';
const DEFAULT_VIEW = 'wk_export.ds_client_segmentation_last_v';
const READ_CAP_BYTES = 4096;
const STORED_EXCERPT_CHARS = 1000;
const MESSAGE_EXCERPT_CHARS = 200;
/** Appended to a failure replayed from l2flow.sap_send instead of sending again. */
const REPLAY_NOTE = ' (recorded before a restart; clear the step to send again)';
const SAP_ERROR_CODES: ReadonlySet<string> = new Set<StepErrorCode>(['SAP_HTTP_ERROR', 'SAP_TIMEOUT', 'SAP_UNREACHABLE', 'SAP_BAD_RESPONSE']);
/** SPEC field order; jsonb does not keep key order, so the body is always rebuilt in this order. */
const PAYLOAD_FIELDS = ['calc_ended', 'calc_date', 'calc_rows', 'logical_date', 'source_sys_cd', 'code_flg'] as const;

export type SapPayload = Record<(typeof PAYLOAD_FIELDS)[number], string>;

export interface SapSenderDeps {
  pool: pg.Pool;
  endpoint: SapEndpoint;
  /** The view whose rows are counted; default wk_export.ds_client_segmentation_last_v. */
  viewName?: string;
  /** IANA timezone of the workflow, for calc_date. */
  timezone: string;
  connectTimeoutMs: number;
  /** Total time allowed for one try, response body included. */
  timeoutMs: number;
  retry: { maxTries: number; baseDelayMs: number; maxDelayMs: number };
  logger: Logger;
  now?: () => Date;
}

export interface SapSendResult {
  idempotencyKey: string;
  httpStatus: number;
  calcRows: number;
  /** Tries recorded for this key, earlier (crashed) invocations included. */
  tries: number;
  /** True when a record for this key already existed: the step was resumed, not started. */
  resumed: boolean;
}

type TryOutcome =
  | { kind: 'http'; status: number; statusText: string; excerpt: string; retryAfterMs: number | undefined }
  | { kind: 'timeout'; ms: number; detail: string }
  | { kind: 'unreachable'; detail: string };

interface SendRow {
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
  code: StepErrorCode;
  message: string;
  retryable: boolean;
  details?: Record<string, unknown>;
}

/** The Idempotency-Key of one run attempt: stable across crash-resumes, new when an operator re-runs the step. */
export function sapIdempotencyKey(ctx: Pick<StepContext, 'workflowId' | 'logicalDate' | 'attempt'> & { loadId: number }): string {
  return `${ctx.workflowId}:${ctx.logicalDate}:${ctx.loadId}:${ctx.attempt}`;
}

/** The request body: the stored payload's fields in SPEC order. */
export function sapPayloadJson(payload: Record<string, unknown>): string {
  const ordered: Record<string, string> = {};
  for (const field of PAYLOAD_FIELDS) {
    const value = payload[field];
    if (typeof value !== 'string') {
      throw new StepError('INTERNAL', `the stored SAP payload has no string field "${field}": delete its l2flow.sap_send row to rebuild it`);
    }
    ordered[field] = value;
  }
  return JSON.stringify(ordered);
}

/** Today's date (YYYY-MM-DD) in an IANA timezone. */
export function dateInTimezone(timezone: string, at: Date): string {
  const parts = new Intl.DateTimeFormat('en-CA', { timeZone: timezone, year: 'numeric', month: '2-digit', day: '2-digit' }).formatToParts(at);
  const get = (type: string): string => parts.find((p) => p.type === type)?.value ?? '';
  return `${get('year')}-${get('month')}-${get('day')}`;
}

/** Milliseconds a `Retry-After` header (seconds or HTTP-date) asks to wait; undefined when absent or unreadable. */
export function retryAfterMs(header: string | string[] | undefined, nowMs: number): number | undefined {
  const value = (Array.isArray(header) ? header[0] : header)?.trim();
  if (!value) return undefined;
  if (/^\d+$/.test(value)) return Number(value) * 1000;
  const at = Date.parse(value);
  return Number.isNaN(at) ? undefined : Math.max(0, at - nowMs);
}

/** Exponential backoff with full jitter before try `tryNo + 1`. */
export function backoffMs(tryNo: number, retry: SapSenderDeps['retry'], random: () => number = Math.random): number {
  return Math.floor(random() * Math.min(retry.maxDelayMs, retry.baseDelayMs * 2 ** (tryNo - 1)));
}

function excerptOf(text: string, max: number): string {
  const flat = text.replace(/\s+/g, ' ').trim();
  if (flat === '') return '(empty body)';
  return flat.length > max ? `${flat.slice(0, max)}…` : flat;
}

function errorCode(err: unknown): string | undefined {
  for (let e: unknown = err, depth = 0; e && typeof e === 'object' && depth < 4; e = (e as { cause?: unknown }).cause, depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'string') return code;
  }
  return undefined;
}

/** Whether a retry could change this outcome: no answer, a 5xx, or 429. */
function retryableOutcome(outcome: TryOutcome): boolean {
  return outcome.kind !== 'http' || outcome.status >= 500 || outcome.status === 429;
}

function recordedError(value: unknown): RecordedError | undefined {
  if (!value || typeof value !== 'object' || Array.isArray(value)) return undefined;
  const { code, message, retryable, details } = value as Record<string, unknown>;
  if (typeof code !== 'string' || !SAP_ERROR_CODES.has(code) || typeof message !== 'string') return undefined;
  const known = details !== null && typeof details === 'object' && !Array.isArray(details);
  return { code: code as StepErrorCode, message, retryable: retryable === true, ...(known ? { details: details as Record<string, unknown> } : {}) };
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

function aborted(signal: AbortSignal): StepError {
  return new StepError('ABORTED', `${STEP} was cancelled`, { cause: signal.reason });
}

function validate(deps: SapSenderDeps): void {
  const { maxTries, baseDelayMs, maxDelayMs } = deps.retry;
  if (!Number.isInteger(maxTries) || maxTries < 1) throw new Error(`SAP retry.maxTries must be an integer ≥ 1, got ${maxTries}`);
  if (!(baseDelayMs >= 0 && maxDelayMs >= 0)) throw new Error('SAP retry.baseDelayMs and retry.maxDelayMs must be ≥ 0');
  if (!(deps.timeoutMs > 0 && deps.connectTimeoutMs > 0)) throw new Error('SAP timeoutMs and connectTimeoutMs must be > 0');
  try {
    dateInTimezone(deps.timezone, new Date());
  } catch {
    throw new Error(`"${deps.timezone}" is not an IANA timezone: write it like Asia/Tashkent`);
  }
}

/** The `send_flg_to_sap` step: POST the readiness flag to SAP once per run attempt, with retries. */
export function createSapSender(deps: SapSenderDeps): StepFn<StepContext, SapSendResult> {
  validate(deps);
  const view = quoteQualified(deps.viewName ?? DEFAULT_VIEW);
  const now = deps.now ?? (() => new Date());
  const { pool, endpoint, retry } = deps;
  const where = sapUrlForHumans(endpoint);
  const authorization = authorizationHeader(endpoint.auth);
  // SAP's answer ends up in the run error, the failure mail and l2flow.sap_send: never with our credentials in it.
  const scrub = credentialScrubber(endpoint.auth);
  const agent = new Agent({ connect: { timeout: deps.connectTimeoutMs }, headersTimeout: deps.timeoutMs, bodyTimeout: deps.timeoutMs });

  async function readRow(key: string): Promise<SendRow | undefined> {
    const { rows } = await pool.query<SendRow>(
      'select payload, status, tries, http_status, response_excerpt, error from l2flow.sap_send where idempotency_key = $1',
      [key],
    );
    return rows[0];
  }

  async function createRow(ctx: StepContext & { loadId: number }, key: string): Promise<void> {
    const { rows } = await pool.query<{ n: string }>(`select count(*) as n from ${view}`);
    const payload: SapPayload = {
      calc_ended: 'X',
      calc_date: dateInTimezone(deps.timezone, now()),
      calc_rows: String(rows[0]?.n ?? '0'),
      logical_date: ctx.logicalDate,
      source_sys_cd: 'DWH',
      code_flg: 'l2_to_SAP_successful',
    };
    await pool.query(
      `insert into l2flow.sap_send (idempotency_key, run_id, logical_date, load_id, payload, status)
       values ($1, $2, $3, $4, $5::jsonb, 'sending') on conflict do nothing`,
      [key, ctx.runId, ctx.logicalDate, ctx.loadId, JSON.stringify(payload)],
    );
  }

  /** Record a try's outcome; a 'failed' row keeps the error thrown, so a resumed step can throw it again. */
  async function record(key: string, outcome: TryOutcome, status: SendRow['status'], error?: StepError): Promise<void> {
    const excerpt = outcome.kind === 'http' ? outcome.excerpt : `${outcome.kind}: ${outcome.detail}`;
    const stored = error ? JSON.stringify({ ...toErrorInfo(error), retryable: error.retryable }) : null;
    await pool.query(
      `update l2flow.sap_send set http_status = $2, response_excerpt = $3, status = $4, error = $5::jsonb,
              sent_at = case when $4 = 'sent' then now() else sent_at end
        where idempotency_key = $1`,
      [key, outcome.kind === 'http' ? outcome.status : null, excerpt.slice(0, STORED_EXCERPT_CHARS), status, stored],
    );
  }

  async function sendOnce(body: string, key: string, signal: AbortSignal): Promise<TryOutcome> {
    const ctrl = new AbortController();
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      ctrl.abort(new Error(`no answer within ${deps.timeoutMs} ms`));
    }, deps.timeoutMs);
    const onAbort = (): void => ctrl.abort(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
    try {
      const headers: Record<string, string> = { 'content-type': 'application/json', 'idempotency-key': key };
      if (authorization) headers.authorization = authorization;
      // reset: one POST a day gains nothing from keep-alive, and a stale pooled socket would cost a try.
      const res = await request(endpoint.url, { dispatcher: agent, method: 'POST', headers, body, signal: ctrl.signal, reset: true });
      const chunks: Buffer[] = [];
      let size = 0;
      for await (const chunk of res.body as AsyncIterable<Buffer>) {
        chunks.push(chunk);
        size += chunk.length;
        if (size >= READ_CAP_BYTES) break;
      }
      return {
        kind: 'http',
        status: res.statusCode,
        statusText: STATUS_CODES[res.statusCode] ?? res.statusText ?? '',
        excerpt: scrub(Buffer.concat(chunks).toString('utf8')),
        retryAfterMs: retryAfterMs(res.headers['retry-after'], Date.now()),
      };
    } catch (err) {
      if (signal.aborted) throw aborted(signal);
      const code = errorCode(err);
      if (timedOut || code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_BODY_TIMEOUT') {
        return { kind: 'timeout', ms: deps.timeoutMs, detail: `no answer within ${deps.timeoutMs} ms` };
      }
      const message = err instanceof Error ? err.message : String(err);
      return { kind: 'unreachable', detail: scrub(code && !message.includes(code) ? `${code} ${message}` : message) };
    } finally {
      clearTimeout(timer);
      signal.removeEventListener('abort', onAbort);
    }
  }

  function failure(outcome: TryOutcome, key: string, tries: number, retryable: boolean): StepError {
    const details = { url: where, idempotencyKey: key, tries, ...(outcome.kind === 'http' ? { httpStatus: outcome.status } : {}) };
    const after = retryable ? `gave up after ${tries} ${tries === 1 ? 'try' : 'tries'}` : 'not retried';
    if (outcome.kind === 'http') {
      const text = `${outcome.status}${outcome.statusText ? ` ${outcome.statusText}` : ''}`;
      return new StepError('SAP_HTTP_ERROR', `SAP answered ${text}: ${excerptOf(outcome.excerpt, MESSAGE_EXCERPT_CHARS)} (POST ${where}; ${after})`, { retryable, details });
    }
    if (outcome.kind === 'timeout') {
      return new StepError('SAP_TIMEOUT', `SAP gave no answer within ${outcome.ms} ms (POST ${where}; ${after})`, { retryable, details });
    }
    return new StepError('SAP_UNREACHABLE', `SAP is unreachable at ${where}: ${outcome.detail} (${after})`, { retryable, details });
  }

  /**
   * The failure a 'failed' row recorded, thrown again instead of repeating a request SAP already refused. Rows
   * failed before sql/003 have no stored error; it is rebuilt from their last answer.
   */
  function recordedFailure(row: SendRow, key: string): StepError {
    let stored = recordedError(row.error);
    if (!stored) {
      const outcome = legacyOutcome(row);
      const err = failure(outcome, key, row.tries, retryableOutcome(outcome));
      stored = { code: err.code, message: err.message, retryable: err.retryable, ...(err.details ? { details: err.details } : {}) };
    }
    return new StepError(stored.code, `${scrub(stored.message)}${REPLAY_NOTE}`, {
      retryable: stored.retryable,
      ...(stored.details ? { details: stored.details } : {}),
    });
  }

  async function pause(ms: number, signal: AbortSignal): Promise<void> {
    try {
      await sleep(ms, undefined, { signal });
    } catch (err) {
      if (signal.aborted) throw aborted(signal);
      throw err;
    }
  }

  return async function sendFlagToSap(ctx, signal) {
    if (ctx.loadId === null) {
      throw new StepError('INTERNAL', `${STEP} for ${ctx.logicalDate} has no load id: get_load_id must run before it`);
    }
    const run = { ...ctx, loadId: ctx.loadId };
    const key = sapIdempotencyKey(run);
    const log = deps.logger.child({ step: STEP, runId: ctx.runId, logicalDate: ctx.logicalDate, loadId: ctx.loadId, idempotencyKey: key });
    throwIfAborted(signal, STEP);

    let row = await readRow(key);
    const resumed = row !== undefined;
    if (!row) {
      await createRow(run, key);
      row = await readRow(key);
      if (!row) throw new StepError('INTERNAL', `the l2flow.sap_send row for ${key} vanished right after it was written`);
    }
    if (row.status === 'failed') {
      const err = recordedFailure(row, key);
      log.warn({ code: err.code, httpStatus: row.http_status, tries: row.tries }, 'this flag failed before a restart; failing again without sending');
      throw err;
    }
    const calcRows = Number(row.payload.calc_rows);
    if (row.status === 'sent') {
      log.info({ httpStatus: row.http_status, tries: row.tries }, 'SAP already has this flag; not sending again');
      return { idempotencyKey: key, httpStatus: row.http_status ?? 0, calcRows, tries: row.tries, resumed: true };
    }
    const body = sapPayloadJson(row.payload);

    for (let n = 1; ; n++) {
      throwIfAborted(signal, STEP);
      const { rows } = await pool.query<{ tries: number }>(
        `update l2flow.sap_send set tries = tries + 1, status = 'sending' where idempotency_key = $1 returning tries`,
        [key],
      );
      const tries = rows[0]?.tries ?? n;
      throwIfAborted(signal, STEP);
      const started = performance.now();
      const outcome = await sendOnce(body, key, signal);
      const durationMs = Math.round(performance.now() - started);
      const status = outcome.kind === 'http' ? outcome.status : outcome.kind;
      log.info({ try: n, tries, status, durationMs, url: where }, `SAP try ${n}: ${status} in ${durationMs} ms`);

      if (outcome.kind === 'http' && outcome.status >= 200 && outcome.status < 300) {
        await record(key, outcome, 'sent');
        return { idempotencyKey: key, httpStatus: outcome.status, calcRows, tries, resumed };
      }
      const retryable = retryableOutcome(outcome);
      if (!retryable || n >= retry.maxTries) {
        const err = failure(outcome, key, n, retryable);
        await record(key, outcome, 'failed', err);
        throw err;
      }
      await record(key, outcome, 'sending');
      const asked = outcome.kind === 'http' ? outcome.retryAfterMs : undefined;
      await pause(asked === undefined ? backoffMs(n, retry) : Math.min(asked, retry.maxDelayMs), signal);
    }
  };
}
