import { STATUS_CODES } from 'node:http';
import type pg from 'pg';
import type { Agent } from 'undici';
import { isTimeZone } from '../../lib/dates.js';
import { codeInCauses, StepError, throwIfAborted } from '../../lib/errors.js';
import { retry, type RetryPolicy } from '../../lib/retry.js';
import { authorizationHeader, credentialScrubber, sapUrlForHumans, type SapEndpoint } from './connection.js';
import { retryableOutcome, sapFailure, type TryOutcome } from './outcome.js';
import { sapIdempotencyKey, sapPayloadJson } from './payload.js';
import { createSendRecord } from './record.js';
import { quoteQualified } from '../db/index.js';
import type { Logger, StepContext, StepFn } from '../types.js';


const STEP = 'send_flg_to_sap';
/** How long an idle connection to SAP is kept for the next POST. */
const SAP_KEEP_ALIVE_MS = 2_000;
const READ_CAP_BYTES = 4096;

export interface SapSenderDeps {
  /** l2flow.sap_send. */
  pool: pg.Pool;
  /** The warehouse, where the view is counted; the same pool object when l2flow's tables live there. */
  dwh: pg.Pool;
  endpoint: SapEndpoint;
  /** The view whose rows are counted (config `sap.viewName`). */
  viewName: string;
  /** IANA timezone of the workflow, for calc_date. */
  timezone: string;
  connectTimeoutMs: number;
  /** Total time allowed for one try, response body included. */
  timeoutMs: number;
  /** Tries and backoff (full jitter unless set); a Retry-After from SAP replaces the backoff, capped by maxDelayMs. */
  retry: RetryPolicy;
  logger: Logger;
  now?: () => Date;
  /** Told about every POST once SAP answered or did not (metrics); called synchronously, it must not throw. */
  onTry?: (t: SapTry) => void;
}

/** One POST to SAP as an observer sees it: `ok` is a 2xx; `answer` is the status class or why there was none. */
export interface SapTry {
  outcome: 'ok' | 'failed';
  answer: `${number}xx` | 'timeout' | 'unreachable';
  durationMs: number;
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

/** Milliseconds a `Retry-After` header (seconds or HTTP-date) asks to wait; undefined when absent or unreadable. */
export function retryAfterMs(header: string | string[] | undefined, nowMs: number): number | undefined {
  const value = (Array.isArray(header) ? header[0] : header)?.trim();
  if (!value) return undefined;
  if (/^\d+$/.test(value)) return Number(value) * 1000;
  const at = Date.parse(value);
  return Number.isNaN(at) ? undefined : Math.max(0, at - nowMs);
}

/** The sender computes calc_date in this zone at every send: refuse a bad one at construction (the config schema's check). */
function assertTimeZone(timezone: string): void {
  if (!isTimeZone(timezone)) throw new Error(`"${timezone}" is not an IANA timezone: write it like Asia/Tashkent`);
}

/** The `send_flg_to_sap` step: POST the readiness flag to SAP once per run attempt, with retries. */
export function createSapSender(deps: SapSenderDeps): StepFn<StepContext, SapSendResult> {
  assertTimeZone(deps.timezone);
  const view = quoteQualified(deps.viewName);
  const now = deps.now ?? (() => new Date());
  const { pool, endpoint, retry: policy } = deps;
  const where = sapUrlForHumans(endpoint);
  const authorization = authorizationHeader(endpoint.auth);
  // SAP's answer ends up in the run error, the failure mail and l2flow.sap_send: never with our credentials in it.
  const scrub = credentialScrubber(endpoint.auth);
  const sends = createSendRecord({ pool, dwh: deps.dwh, view, timezone: deps.timezone, now, where, scrub });
  // undici is loaded at the first POST, not at start-up (about 0.15 s of the process's start).
  let client: Promise<{ agent: Agent; request: typeof import('undici').request }> | null = null;
  const http = () =>
    (client ??= import('undici').then(({ Agent, request }) => ({
      // Keep-alive for a short while only: a backfill's POSTs, milliseconds apart, share one connection (a new one
      // each cost ~1 ms of CPU and a handshake on the step's path); the daily POST finds it closed by us, well before
      // a server's keep-alive timeout (typically 5 s or more) could leave us a stale socket.
      agent: new Agent({
        connect: { timeout: deps.connectTimeoutMs }, headersTimeout: deps.timeoutMs, bodyTimeout: deps.timeoutMs,
        keepAliveTimeout: SAP_KEEP_ALIVE_MS, keepAliveMaxTimeout: SAP_KEEP_ALIVE_MS,
      }),
      request,
    })));

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
      const { agent, request } = await http();
      const res = await request(endpoint.url, { dispatcher: agent, method: 'POST', headers, body, signal: ctrl.signal });
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
      throwIfAborted(signal, STEP);
      const code = codeInCauses(err);
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

  return async function sendFlagToSap(ctx, signal) {
    if (ctx.loadId === null) {
      throw new StepError('INTERNAL', `${STEP} for ${ctx.logicalDate} has no load id: get_load_id must run before it`);
    }
    const run = { ...ctx, loadId: ctx.loadId };
    const key = sapIdempotencyKey(run);
    const log = deps.logger.child({ step: STEP, runId: ctx.runId, logicalDate: ctx.logicalDate, loadId: ctx.loadId, idempotencyKey: key });
    throwIfAborted(signal, STEP);

    const { row, created } = await sends.open(run, key);
    const resumed = !created;
    /** The record was written just now with its first try counted: that try needs no update of its own. */
    const firstTryCounted = created;
    if (row.status === 'failed') {
      const err = sends.recordedFailure(row, key);
      // A step retry (config `retries`) of a failure SAP may get over (5xx, 429, no answer) sends again under the
      // same key; a resumed first try, or a refusal (4xx), fails again without sending.
      if (!((ctx.tryNumber ?? 1) > 1 && err.retryable)) {
        log.warn({ code: err.code, httpStatus: row.http_status, tries: row.tries }, 'this flag failed before a restart; failing again without sending');
        throw err;
      }
      log.info({ tryNumber: ctx.tryNumber, code: err.code }, 'step retry: sending the flag again under the same key');
    }
    const calcRows = Number(row.payload.calc_rows);
    if (row.status === 'sent') {
      log.info({ httpStatus: row.http_status, tries: row.tries }, 'SAP already has this flag; not sending again');
      return { idempotencyKey: key, httpStatus: row.http_status ?? 0, calcRows, tries: row.tries, resumed: true };
    }
    const body = sapPayloadJson(row.payload);

    let last: { outcome: TryOutcome; error: StepError } | undefined;
    try {
      return await retry(async (n) => {
        throwIfAborted(signal, STEP);
        const counted = firstTryCounted && n === 1;
        const tries = counted ? 1 : ((await sends.startTry(ctx, key)) ?? n);
        throwIfAborted(signal, STEP);
        const started = performance.now();
        const outcome = await sendOnce(body, key, signal);
        const durationMs = Math.round(performance.now() - started);
        const status = outcome.kind === 'http' ? outcome.status : outcome.kind;
        log.info({ try: n, tries, status, durationMs, url: where }, `SAP try ${n}: ${status} in ${durationMs} ms`);
        const ok = outcome.kind === 'http' && outcome.status >= 200 && outcome.status < 300;
        const answer = outcome.kind === 'http' ? (`${Math.floor(outcome.status / 100)}xx` as const) : outcome.kind;
        deps.onTry?.({ outcome: ok ? 'ok' : 'failed', answer, durationMs });

        if (ok && outcome.kind === 'http') {
          await sends.record(key, outcome, 'sent');
          return { idempotencyKey: key, httpStatus: outcome.status, calcRows, tries, resumed };
        }
        // retryable: no answer, a 5xx or 429 is tried again; any other 4xx fails at once.
        last = { outcome, error: sapFailure(outcome, { where, key, tries: n, retryable: retryableOutcome(outcome) }) };
        throw last.error;
      }, policy, {
        what: STEP,
        signal,
        // Only SAP's answer decides; a database error while recording the try is not a reason to POST again.
        isRetryable: (err) => err instanceof StepError && err.retryable,
        requestedDelayMs: () => (last?.outcome.kind === 'http' ? last.outcome.retryAfterMs : undefined),
        onRetry: () => last && sends.record(key, last.outcome, 'sending'),
      });
    } catch (err) {
      // The send's own failure, not a cancellation: a resumed step throws it again instead of sending.
      if (last && err === last.error) await sends.record(key, last.outcome, 'failed', last.error);
      throw err;
    }
  };
}
