import http from 'node:http';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { inspect } from 'node:util';
import { pino } from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import pg from 'pg';
import { createSegmentationView, createTestDb, type TestDb } from '../helpers/db.js';
import { StepError } from '../../src/lib/errors.js';
import { DEFAULTS } from '../../src/runtime/config.js';
import {
  createSapSender,
  describeSapEndpoint,
  parseSapConnection,
  type SapEndpoint,
  type SapSenderDeps,
} from '../../src/services/sap/index.js';
import type { StepContext } from '../../src/services/types.js';

interface Received { method: string; url: string; headers: http.IncomingHttpHeaders; body: string; at: number }
type Handler = (res: http.ServerResponse, n: number) => void;

const servers: http.Server[] = [];

async function startSap(handler: Handler): Promise<{ base: string; requests: Received[] }> {
  const requests: Received[] = [];
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      requests.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers, body: Buffer.concat(chunks).toString(), at: Date.now() });
      handler(res, requests.length);
    });
  });
  servers.push(server);
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return { base: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, requests };
}

async function freePort(): Promise<number> {
  const s = http.createServer().listen(0, '127.0.0.1');
  await once(s, 'listening');
  const { port } = s.address() as AddressInfo;
  await new Promise((r) => s.close(r));
  return port;
}

function reply(res: http.ServerResponse, status: number, body = '', headers: Record<string, string> = {}): void {
  res.writeHead(status, headers).end(body);
}

function memoryLogger(): { logger: SapSenderDeps['logger']; lines: string[] } {
  const lines: string[] = [];
  return { logger: pino({ level: 'info' }, { write: (s: string) => void lines.push(s) }), lines };
}

// 20:30 UTC on 9 March is already 10 March in Tashkent (UTC+5).
const NOW = new Date('2024-03-09T20:30:00Z');
const WF = 'WF_MAIN_DATASETS_LOAD_L2_TO_L2';
let seq = 0;

function context(over: Partial<StepContext> = {}): StepContext {
  seq += 1;
  const day = String(seq).padStart(2, '0');
  return { runId: `run-${seq}`, workflowId: WF, logicalDate: `2024-04-${day}`, businessDate: `2024-03-${day}`, attempt: 1, loadId: 1000 + seq, ...over };
}

function payloadJson(calcRows: string, logicalDate: string, calcDate = '2024-03-10'): string {
  return JSON.stringify({ calc_ended: 'X', calc_date: calcDate, calc_rows: calcRows, logical_date: logicalDate, source_sys_cd: 'DWH', code_flg: 'l2_to_SAP_successful' });
}

async function rejection(p: Promise<unknown>): Promise<StepError> {
  const err = await p.then(() => undefined, (e: unknown) => e);
  expect(err).toBeInstanceOf(StepError);
  return err as StepError;
}

describe('SAP sender', () => {
  let db: TestDb;
  const live = new AbortController().signal;

  beforeAll(async () => {
    db = await createTestDb();
    await createSegmentationView(db.pool, 42);
  });
  afterEach(async () => {
    for (const s of servers.splice(0)) {
      s.closeAllConnections();
      await new Promise((r) => s.close(r));
    }
  });
  afterAll(async () => { await db.drop(); });

  function sender(endpoint: SapEndpoint, over: Partial<SapSenderDeps> = {}) {
    return createSapSender({
      pool: db.pool, dwh: db.pool, endpoint, viewName: DEFAULTS.sap.viewName, timezone: 'Asia/Tashkent', connectTimeoutMs: 1000, timeoutMs: 2000,
      retry: { maxTries: 4, baseDelayMs: 10, maxDelayMs: 50 }, logger: memoryLogger().logger, now: () => NOW, ...over,
    });
  }

  async function sendRows(runId: string) {
    const { rows } = await db.pool.query('select * from l2flow.sap_send where run_id = $1 order by idempotency_key', [runId]);
    return rows as Array<{
      idempotency_key: string; status: string; tries: number; http_status: number | null; response_excerpt: string | null; sent_at: Date | null; error: unknown;
    }>;
  }

  it('posts the exact SPEC payload with a bearer token and Idempotency-Key, logging no secret', async () => {
    const sap = await startSap((res) => reply(res, 200, 'ok'));
    const { logger, lines } = memoryLogger();
    const ctx = context();
    const result = await sender(parseSapConnection(`${sap.base}/sap/flag?token=tok-secret-1&sap-client=100`), { logger })(ctx, live);

    const key = `${WF}:${ctx.logicalDate}:${ctx.loadId}:1`;
    expect(result).toEqual({ idempotencyKey: key, httpStatus: 200, calcRows: 42, tries: 1, resumed: false });
    expect(sap.requests).toHaveLength(1);
    const req = sap.requests[0]!;
    expect(req).toMatchObject({ method: 'POST', url: '/sap/flag?sap-client=100', body: payloadJson('42', ctx.logicalDate) });
    expect(req.headers).toMatchObject({ 'content-type': 'application/json', 'idempotency-key': key, authorization: 'Bearer tok-secret-1' });
    const [row] = await sendRows(ctx.runId);
    expect(row).toMatchObject({ idempotency_key: key, status: 'sent', tries: 1, http_status: 200, response_excerpt: 'ok' });
    expect(row?.sent_at).toBeInstanceOf(Date);
    expect(lines.filter((l) => l.includes('SAP try'))).toHaveLength(1);
    expect(lines.join('')).not.toMatch(/tok-secret-1|Bearer|authorization/i);
  });

  it('sends URL-decoded basic credentials', async () => {
    const sap = await startSap((res) => reply(res, 204));
    const port = new URL(sap.base).port;
    const result = await sender(parseSapConnection(`http://sap%20user:p%40ss%3Aw0rd@127.0.0.1:${port}/flag`))(context(), live);
    expect(result.httpStatus).toBe(204);
    expect(sap.requests[0]?.headers.authorization).toBe(`Basic ${Buffer.from('sap user:p@ss:w0rd').toString('base64')}`);
  });

  it('retries 503 twice, then succeeds on the third try with one sent row', async () => {
    const sap = await startSap((res, n) => (n < 3 ? reply(res, 503, 'busy') : reply(res, 200, 'ok')));
    const { logger, lines } = memoryLogger();
    const ctx = context();
    const result = await sender(parseSapConnection(`${sap.base}/flag`), { logger })(ctx, live);
    expect(result).toMatchObject({ httpStatus: 200, tries: 3, resumed: false });
    expect(new Set(sap.requests.map((r) => `${String(r.headers['idempotency-key'])} ${r.body}`)).size).toBe(1);
    expect(await sendRows(ctx.runId)).toMatchObject([{ status: 'sent', tries: 3, http_status: 200 }]);
    expect(lines.filter((l) => l.includes('SAP try'))).toHaveLength(3);
  });

  it('honours Retry-After on 429', async () => {
    const sap = await startSap((res, n) => (n === 1 ? reply(res, 429, 'slow down', { 'retry-after': '1' }) : reply(res, 200)));
    const result = await sender(parseSapConnection(`${sap.base}/flag`), { retry: { maxTries: 3, baseDelayMs: 10, maxDelayMs: 5000 } })(context(), live);
    expect(result.tries).toBe(2);
    expect(sap.requests[1]!.at - sap.requests[0]!.at).toBeGreaterThanOrEqual(950);
  });

  it('fails at once on 400, quoting the status and the start of the body', async () => {
    const sap = await startSap((res) => reply(res, 400, `{"error":"calc_rows must be numeric","trace":"${'x'.repeat(500)}"}`));
    const ctx = context();
    const err = await rejection(sender(parseSapConnection(`${sap.base}/flag?token=tok-secret-2`))(ctx, live));
    expect(err.code).toBe('SAP_HTTP_ERROR');
    expect(err.retryable).toBe(false);
    expect(err.message).toMatch(/^SAP answered 400 Bad Request: \{"error":"calc_rows must be numeric"/);
    expect(err.message.length).toBeLessThan(400);
    expect(err.message).not.toContain('tok-secret-2');
    expect(sap.requests).toHaveLength(1);
    expect(await sendRows(ctx.runId)).toMatchObject([{ status: 'failed', tries: 1, http_status: 400 }]);
  });

  it('removes basic credentials that SAP echoes in its answer from the error and the stored excerpt', async () => {
    const header = `Basic ${Buffer.from('ops:pw-echo%secret').toString('base64')}`;
    const sap = await startSap((res) => reply(res, 403, `denied for "${header}" (password pw-echo%secret, pw-echo%25secret)`));
    const ctx = context();
    const err = await rejection(sender(parseSapConnection(`${sap.base.replace('//', '//ops:pw-echo%25secret@')}/flag`))(ctx, live));
    expect(sap.requests[0]?.headers.authorization).toBe(header);
    expect(err.message).toContain('denied for "Basic ***" (password ***, ***)');
    expect(JSON.stringify(await sendRows(ctx.runId))).not.toMatch(/pw-echo|b3BzOnB3LWVjaG8lc2VjcmV0/);
  });

  it('reports SAP_TIMEOUT when SAP never answers', async () => {
    const sap = await startSap(() => undefined);
    const port = new URL(sap.base).port;
    const started = Date.now();
    const err = await rejection(
      sender(parseSapConnection(`http://u:pw-secret@127.0.0.1:${port}/flag`), { timeoutMs: 200, retry: { maxTries: 2, baseDelayMs: 10, maxDelayMs: 20 } })(context(), live),
    );
    expect(err).toMatchObject({ code: 'SAP_TIMEOUT', retryable: true });
    expect(err.message).toContain(`http://127.0.0.1:${port}/flag`);
    expect(err.message).not.toContain('pw-secret');
    expect(sap.requests).toHaveLength(2);
    expect(Date.now() - started).toBeLessThan(2000);
  });

  it('reports SAP_UNREACHABLE when the connection is refused', async () => {
    const port = await freePort();
    const ctx = context();
    const err = await rejection(sender(parseSapConnection(`http://u:pw-secret@127.0.0.1:${port}/flag`), { retry: { maxTries: 2, baseDelayMs: 10, maxDelayMs: 20 } })(ctx, live));
    expect(err).toMatchObject({ code: 'SAP_UNREACHABLE', retryable: true });
    expect(err.message).toContain(`http://127.0.0.1:${port}/flag`);
    expect(err.message).toContain('ECONNREFUSED');
    expect(inspect(err)).not.toContain('pw-secret');
    expect(await sendRows(ctx.runId)).toMatchObject([{ status: 'failed', tries: 2, http_status: null }]);
  });

  it('does not send again for the same run attempt after success', async () => {
    const sap = await startSap((res) => reply(res, 200));
    const send = sender(parseSapConnection(`${sap.base}/flag`));
    const ctx = context();
    const first = await send(ctx, live);
    const again = await send(ctx, live);
    expect(again).toEqual({ ...first, resumed: true });
    expect(sap.requests).toHaveLength(1);
  });

  it('reads or writes its send record in one statement; a resumed step does not count the view again', async () => {
    // Counting this view fails once guard.n is 0: a resumed step that counted it again would fail.
    await db.pool.query(`create table if not exists wk_export.sap_guard (n int); delete from wk_export.sap_guard; insert into wk_export.sap_guard values (1);
      create or replace view wk_export.sap_guard_v as select 1 / (select n from wk_export.sap_guard) as x`);
    const sap = await startSap((res, n) => reply(res, n === 1 ? 503 : 200));
    const send = sender(parseSapConnection(`${sap.base}/flag`), { viewName: 'wk_export.sap_guard_v', retry: { maxTries: 1, baseDelayMs: 10, maxDelayMs: 10 } });
    const ctx = context();
    const spy = vi.spyOn(pg.Client.prototype, 'query');
    let sent: string[];
    try {
      await rejection(send(ctx, live)); // SAP answers 503: the row stays, failed
      sent = spy.mock.calls.map(([q]) => (typeof q === 'string' ? q : (q as { text: string }).text).replace(/\s+/g, ' ').slice(0, 30));
    } finally {
      spy.mockRestore();
    }
    // Before the POST: one statement (the record written with the count); after it: the answer recorded.
    expect(sent).toEqual(['with existing as (select paylo', 'update l2flow.sap_send set htt']);
    await db.pool.query('update wk_export.sap_guard set n = 0');
    // A step retry of the recorded 503 sends again from the stored payload, without counting the view.
    const result = await send({ ...ctx, tryNumber: 2 }, live);
    expect(result).toMatchObject({ calcRows: 1, resumed: true, httpStatus: 200 });
    expect(sap.requests.map((r) => r.body)).toEqual([payloadJson('1', ctx.logicalDate), payloadJson('1', ctx.logicalDate)]);
  });

  it('resends a crashed "sending" row with the same key and the body first built', async () => {
    await db.pool.query('create or replace view wk_export.sap_crash_v as select g from generate_series(1, 5) g');
    const crash = new AbortController();
    const sap = await startSap((res, n) => (n === 1 ? crash.abort() : reply(res, 200)));
    const ctx = context();
    const endpoint = parseSapConnection(`${sap.base}/flag`);
    const err = await rejection(sender(endpoint, { viewName: 'wk_export.sap_crash_v' })(ctx, crash.signal));
    expect(err.code).toBe('ABORTED');
    expect(await sendRows(ctx.runId)).toMatchObject([{ status: 'sending', tries: 1 }]);

    // The restarted process sees other data and another day; the body must not change.
    await db.pool.query('create or replace view wk_export.sap_crash_v as select g from generate_series(1, 9) g');
    const later = new Date('2024-03-12T08:00:00Z');
    const result = await sender(endpoint, { viewName: 'wk_export.sap_crash_v', now: () => later })(ctx, live);
    expect(result).toMatchObject({ calcRows: 5, tries: 2, resumed: true, httpStatus: 200 });
    const [a, b] = sap.requests;
    expect(b?.headers['idempotency-key']).toBe(a?.headers['idempotency-key']);
    expect(b?.body).toBe(a?.body);
    expect(b?.body).toBe(payloadJson('5', ctx.logicalDate));
  });

  it('uses a new key for a new attempt', async () => {
    const sap = await startSap((res) => reply(res, 200));
    const send = sender(parseSapConnection(`${sap.base}/flag`));
    const ctx = context();
    const first = await send(ctx, live);
    const second = await send({ ...ctx, attempt: 2 }, live);
    expect(first.idempotencyKey).toMatch(/:1$/);
    expect(second).toMatchObject({ idempotencyKey: first.idempotencyKey.replace(/:1$/, ':2'), resumed: false });
    expect(sap.requests.map((r) => r.headers['idempotency-key'])).toEqual([first.idempotencyKey, second.idempotencyKey]);
    expect(await sendRows(ctx.runId)).toHaveLength(2);
  });

  const REPLAYED = ' (recorded before a restart; clear the step to send again)';

  it('fails a resumed step again with the recorded 400, without sending', async () => {
    const sap = await startSap((res) => reply(res, 400, '{"error":"calc_rows must be numeric"}'));
    const endpoint = parseSapConnection(`${sap.base}/flag?token=tok-secret-3`);
    const ctx = context();
    const first = await rejection(sender(endpoint)(ctx, live));
    expect(sap.requests).toHaveLength(1);
    const [row] = await sendRows(ctx.runId);
    expect(row).toMatchObject({ status: 'failed', tries: 1, error: { code: 'SAP_HTTP_ERROR', message: first.message, retryable: false, details: first.details } });

    // The process died before the run's transition was saved: a new process invokes the step again.
    const again = await rejection(sender(endpoint)(ctx, live));
    expect(sap.requests).toHaveLength(1);
    expect(again).toMatchObject({ code: 'SAP_HTTP_ERROR', retryable: false, message: `${first.message}${REPLAYED}`, details: first.details });
    expect(again.message).toMatch(/^SAP answered 400 Bad Request: \{"error":"calc_rows must be numeric"\}/);
    expect(again.message).not.toContain('tok-secret-3');
    expect(await sendRows(ctx.runId)).toEqual([row]);
  });

  it('fails a resumed step again with the recorded SAP_UNREACHABLE, without sending', async () => {
    const sap = await startSap((res) => res.socket?.destroy());
    const endpoint = parseSapConnection(`${sap.base}/flag`);
    const send = sender(endpoint, { retry: { maxTries: 2, baseDelayMs: 10, maxDelayMs: 20 } });
    const ctx = context();
    const first = await rejection(send(ctx, live));
    expect(first).toMatchObject({ code: 'SAP_UNREACHABLE', retryable: true });
    expect(first.message).toContain('gave up after 2 tries');
    expect(sap.requests).toHaveLength(2);

    const again = await rejection(send(ctx, live));
    expect(sap.requests).toHaveLength(2);
    expect(again).toMatchObject({ code: 'SAP_UNREACHABLE', retryable: true, message: `${first.message}${REPLAYED}` });
    expect(await sendRows(ctx.runId)).toMatchObject([{ status: 'failed', tries: 2, http_status: null }]);
  });

  it('sends again under a new key for a new attempt after a recorded failure', async () => {
    const sap = await startSap((res, n) => (n === 1 ? reply(res, 400, 'bad') : reply(res, 200, 'ok')));
    const send = sender(parseSapConnection(`${sap.base}/flag`));
    const ctx = context();
    const first = await rejection(send(ctx, live));
    expect(first.code).toBe('SAP_HTTP_ERROR');
    const second = await send({ ...ctx, attempt: 2 }, live);
    const key1 = `${WF}:${ctx.logicalDate}:${ctx.loadId}:1`;
    const key2 = `${WF}:${ctx.logicalDate}:${ctx.loadId}:2`;
    expect(second).toMatchObject({ idempotencyKey: key2, httpStatus: 200, tries: 1, resumed: false });
    expect(sap.requests.map((r) => r.headers['idempotency-key'])).toEqual([key1, key2]);
    expect(await sendRows(ctx.runId)).toMatchObject([
      { idempotency_key: key1, status: 'failed', http_status: 400 },
      { idempotency_key: key2, status: 'sent', http_status: 200, error: null },
    ]);
  });

  it('rebuilds the error of a row failed before sql/003 from its status and excerpt, without a secret', async () => {
    const sap = await startSap((res) => reply(res, 500, 'must not be called'));
    const endpoint = parseSapConnection(`${sap.base}/flag?token=tok-secret-4`);
    const send = sender(endpoint);
    const legacy = async (httpStatus: number | null, excerpt: string, tries: number) => {
      const ctx = context();
      const key = `${WF}:${ctx.logicalDate}:${ctx.loadId}:1`;
      await db.pool.query(
        `insert into l2flow.sap_send (idempotency_key, run_id, logical_date, load_id, payload, status, tries, http_status, response_excerpt)
         values ($1, $2, $3, $4, $5::jsonb, 'failed', $6, $7, $8)`,
        [key, ctx.runId, ctx.logicalDate, ctx.loadId, payloadJson('42', ctx.logicalDate), tries, httpStatus, excerpt],
      );
      return rejection(send(ctx, live));
    };
    const where = `${sap.base}/flag`;

    const http = await legacy(422, 'rejected: tok-secret-4 is not allowed', 1);
    expect(http).toMatchObject({ code: 'SAP_HTTP_ERROR', retryable: false, details: { httpStatus: 422, tries: 1 } });
    expect(http.message).toBe(`SAP answered 422 Unprocessable Entity: rejected: *** is not allowed (POST ${where}; not retried)${REPLAYED}`);

    const refused = await legacy(null, 'unreachable: ECONNREFUSED connect ECONNREFUSED 127.0.0.1:9', 3);
    expect(refused).toMatchObject({ code: 'SAP_UNREACHABLE', retryable: true });
    expect(refused.message).toBe(`SAP is unreachable at ${where}: ECONNREFUSED connect ECONNREFUSED 127.0.0.1:9 (gave up after 3 tries)${REPLAYED}`);

    const timeout = await legacy(null, 'timeout: no answer within 1500 ms', 2);
    expect(timeout).toMatchObject({ code: 'SAP_TIMEOUT', retryable: true });
    expect(timeout.message).toBe(`SAP gave no answer within 1500 ms (POST ${where}; gave up after 2 tries)${REPLAYED}`);
    expect(sap.requests).toHaveLength(0);
  });

  it('rejects ABORTED quickly when aborted during a backoff', async () => {
    const ctrl = new AbortController();
    const sap = await startSap((res) => {
      reply(res, 503, 'busy', { 'retry-after': '5' });
      setTimeout(() => ctrl.abort(), 100);
    });
    const send = sender(parseSapConnection(`${sap.base}/flag`), { retry: { maxTries: 3, baseDelayMs: 10, maxDelayMs: 10_000 } });
    const started = Date.now();
    const err = await rejection(send(context(), ctrl.signal));
    expect(err.code).toBe('ABORTED');
    expect(Date.now() - started).toBeLessThan(5_000); // before the 5 s Retry-After could have ended
    expect(sap.requests).toHaveLength(1);
  });

  it('refuses a run without a load id, and a bad timezone at construction', async () => {
    const endpoint = parseSapConnection('http://127.0.0.1:9/flag');
    const err = await rejection(sender(endpoint)(context({ loadId: null }), live));
    expect(err.code).toBe('INTERNAL');
    expect(() => sender(endpoint, { timezone: 'Mars/Olympus' })).toThrow(/IANA timezone/);
  });
});

describe('parseSapConnection', () => {
  it('reads basic credentials, a token parameter and an Airflow __extra__ token', () => {
    expect(parseSapConnection('https://sap%20user:pa%3Ass@sap.example.com/api/flag')).toEqual({
      url: 'https://sap.example.com/api/flag',
      auth: { kind: 'basic', username: 'sap user', password: 'pa:ss' },
    });
    expect(parseSapConnection('https://sap.example.com/flag?token=abc&client=100')).toEqual({
      url: 'https://sap.example.com/flag?client=100',
      auth: { kind: 'bearer', token: 'abc' },
    });
    const extra = encodeURIComponent(JSON.stringify({ token: 'xyz', verify: false }));
    expect(parseSapConnection(`https://u:p@sap.example.com:8443/flag?__extra__=${extra}`)).toEqual({
      url: 'https://sap.example.com:8443/flag',
      auth: { kind: 'bearer', token: 'xyz' },
    });
    expect(parseSapConnection('http://sap.example.com/flag')).toEqual({ url: 'http://sap.example.com/flag', auth: { kind: 'none' } });
  });

  it('describes an endpoint without its secrets', () => {
    expect(describeSapEndpoint(parseSapConnection('https://sap.example.com/flag?token=tok-9&k=v'))).toBe('https://sap.example.com/flag (bearer token)');
    const basic = describeSapEndpoint(parseSapConnection('https://ops:pw-9@sap.example.com/flag'));
    expect(basic).toBe('https://sap.example.com/flag (basic as "ops")');
  });

  it.each([
    ['ftp://user:s3cr3t-pw@sap.example.com/x', 's3cr3t-pw', /scheme "ftp".*http or https/],
    ['user:s3cr3t-pw@sap.example.com', 's3cr3t-pw', /must start with https:\/\//],
    ['sap.example.com/flag?token=t0k3n-secret', 't0k3n-secret', /must start with https:\/\//],
    ['https://user:hunter2@:99999/x', 'hunter2', /not a valid URL/],
    ['https://user:pw%ZZsecret@sap.example.com/', 'secret', /badly percent-encoded password/],
    ['https://sap.example.com/x?__extra__={"token":"s3cret-in-extra"', 's3cret-in-extra', /__extra__.*not valid JSON/],
    ['https://sap.example.com/x?token=&other=keep-private', 'keep-private', /empty token/],
  ])('rejects %s, naming the fix but not the secret', (uri, secret, expected) => {
    let caught: unknown;
    try {
      parseSapConnection(uri);
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(Error);
    expect((caught as Error).message).toMatch(expected);
    expect((caught as Error).message).toMatch(/write it as https:\/\/user:password@host\/path/);
    expect(inspect(caught)).not.toContain(secret);
  });
});
