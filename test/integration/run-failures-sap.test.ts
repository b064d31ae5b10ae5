import { createServer } from 'node:net';
import type { AddressInfo } from 'node:net';
import { describe, expect, it } from 'vitest';
import { useFixture, RECIPIENTS, SECRETS, WF, type Fixture } from '../helpers/app-fixture.js';
import { until } from '../helpers/process.js';

// Run level: what a run does, and what its error, `l2flow status` and the failure mail say, for each way the SAP
// endpoint can answer. The sender's own retry arithmetic is covered in sap.test.ts.

let fx: Fixture;
useFixture((f) => (fx = f));

async function sapSend(date: string) {
  return (await fx.db.pool.query(
    `select status, tries, http_status, response_excerpt from l2flow.sap_send where logical_date = $1`, [date])).rows;
}

/** The one failure mail of `date`, once `status` says it was sent; no second one follows. */
async function theFailureMail(date: string) {
  await until('the failure mail to be sent', async () => (await fx.status(date)).out.includes('failure mail: sent after 1 try'));
  await new Promise((r) => setTimeout(r, 300));
  const mails = fx.mails(date);
  expect(mails).toHaveLength(1);
  expect(mails[0]!.envelopeTo.sort()).toEqual([...RECIPIENTS].sort());
  return mails[0]!;
}

async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  const { port } = srv.address() as AddressInfo;
  await new Promise<void>((resolve) => srv.close(() => resolve()));
  return port;
}

describe('run level: the SAP endpoint', () => {
  it('503 twice then 200: the run succeeds after retries, one sent record, three requests under one key', async () => {
    const D = '2024-09-01';
    fx.answer((res, n) => (n < 3 ? res.writeHead(503, { 'content-type': 'text/plain' }).end('busy') : res.writeHead(200).end('{"ok":true}')));
    await fx.startApp(D);
    await fx.trigger(D, { flag: true });
    const run = await fx.finished(D);
    expect(run).toMatchObject({ status: 'success', error: null, error_info: null });

    const reqs = fx.sapRequests(D);
    expect(reqs).toHaveLength(3);
    expect(new Set(reqs.map((r) => r.headers['idempotency-key']))).toEqual(new Set([`${WF}:${D}:${run.load_id}:1`]));
    expect(new Set(reqs.map((r) => r.body)).size).toBe(1);
    expect(reqs.every((r) => r.headers.authorization === `Bearer ${SECRETS.sap}`)).toBe(true);
    expect(await sapSend(D)).toMatchObject([{ status: 'sent', tries: 3, http_status: 200 }]);

    const status = JSON.parse((await fx.status(D, true)).out);
    expect(status).toMatchObject({ status: 'success', error: null, failure_email: [] });
    expect(status.steps).toContainEqual(expect.objectContaining({ step: 'send_flg_to_sap', status: 'success', error: null }));
    expect(fx.mails(D)).toHaveLength(0);
  });

  it('429 with Retry-After: the retry waits as long as SAP asked, then the run succeeds', async () => {
    const D = '2024-09-02';
    fx.answer((res, n) => (n === 1 ? res.writeHead(429, { 'retry-after': '1' }).end('slow down') : res.writeHead(200).end('{"ok":true}')));
    await fx.startApp(D);
    await fx.trigger(D, { flag: true });
    expect(await fx.finished(D)).toMatchObject({ status: 'success', error: null });
    const [first, second, ...more] = fx.sapRequests(D);
    expect(more).toHaveLength(0);
    // The configured backoff is 20 ms: only the header explains a pause of a second.
    expect(second!.at - first!.at).toBeGreaterThanOrEqual(950);
    expect(second!.headers['idempotency-key']).toBe(first!.headers['idempotency-key']);
    expect(await sapSend(D)).toMatchObject([{ status: 'sent', tries: 2, http_status: 200 }]);
  });

  it('400: fails at once without a retry; the run error, status and one mail quote the status and the start of the body', async () => {
    const D = '2024-09-03';
    const body = `{"error":"calc_rows must be numeric","trace":"${'x'.repeat(400)}END-OF-BODY"}`;
    fx.answer((res) => res.writeHead(400, { 'content-type': 'application/json' }).end(body));
    await fx.startApp(D);
    await fx.trigger(D, { flag: true });
    const run = await fx.finished(D);
    expect(run.status).toBe('failed');
    expect(fx.sapRequests(D)).toHaveLength(1);
    expect(run.error_info).toMatchObject({ code: 'SAP_HTTP_ERROR', details: { step: 'send_flg_to_sap' } });
    const quoted = 'SAP answered 400 Bad Request: {"error":"calc_rows must be numeric"';
    expect(run.error).toContain(`send_flg_to_sap: ${quoted}`);
    expect(run.error).toContain('not retried');
    expect(run.error).not.toContain('END-OF-BODY'); // the start of the body, not all of it
    expect(await sapSend(D)).toMatchObject([{ status: 'failed', tries: 1, http_status: 400 }]);

    const mail = await theFailureMail(D);
    expect(mail.subject).toContain('send_flg_to_sap — SAP_HTTP_ERROR: SAP answered 400 Bad Request');
    expect(mail.text).toContain(quoted);
    expect(mail.text).toContain(`Load id:       ${run.load_id}`);
    expect(mail.html).toContain('SAP answered 400 Bad Request: {&quot;error&quot;:&quot;calc_rows must be numeric&quot;');

    const text = (await fx.status(D)).out;
    expect(text).toContain(`error: SAP_HTTP_ERROR: send_flg_to_sap: ${quoted}`);
    expect(text).toMatch(/send_flg_to_sap\s+failed .* SAP_HTTP_ERROR: SAP answered 400/);
    const json = JSON.parse((await fx.status(D, true)).out);
    expect(json).toMatchObject({ status: 'failed', error: { code: 'SAP_HTTP_ERROR' }, failure_email: [{ status: 'sent', tries: 1 }] });
    expect(json.error.message).toContain(quoted);
  });

  it('no answer within the timeout: SAP_TIMEOUT after every try, in the run error, status and the mail', async () => {
    const D = '2024-09-04';
    fx.answer(() => undefined); // reads the request, never answers
    await fx.startApp(D, { file: { sap: { maxTries: 2 } } });
    const started = Date.now();
    await fx.trigger(D, { flag: true });
    const run = await fx.finished(D);
    expect(run.status).toBe('failed');
    expect(fx.sapRequests(D)).toHaveLength(2);
    expect(Date.now() - started).toBeLessThan(6000);
    expect(run.error_info?.code).toBe('SAP_TIMEOUT');
    expect(run.error).toMatch(/^send_flg_to_sap: SAP gave no answer within 1000 ms \(POST http:\/\/127\.0\.0\.1:\d+\/sap\/readiness; gave up after 2 tries\)$/);
    expect(await sapSend(D)).toMatchObject([{ status: 'failed', tries: 2, http_status: null }]);

    const mail = await theFailureMail(D);
    expect(mail.subject).toContain('SAP_TIMEOUT');
    expect(mail.text).toContain('SAP gave no answer within 1000 ms');
    expect((await fx.status(D)).out).toContain('error: SAP_TIMEOUT: send_flg_to_sap: SAP gave no answer within 1000 ms');
  });

  it('connection refused: SAP_UNREACHABLE naming the address and ECONNREFUSED, after every try', async () => {
    const D = '2024-09-05';
    const port = await freePort();
    await fx.startApp(D, { sapUri: `http://127.0.0.1:${port}/sap/readiness?token=${SECRETS.sap}` });
    await fx.trigger(D, { flag: true });
    const run = await fx.finished(D);
    expect(run.status).toBe('failed');
    expect(run.error_info?.code).toBe('SAP_UNREACHABLE');
    expect(run.error).toContain(`send_flg_to_sap: SAP is unreachable at http://127.0.0.1:${port}/sap/readiness`);
    expect(run.error).toContain('ECONNREFUSED');
    expect(run.error).toContain('gave up after 3 tries');
    expect(await sapSend(D)).toMatchObject([{ status: 'failed', tries: 3, http_status: null }]);

    const mail = await theFailureMail(D);
    expect(mail.subject).toContain('SAP_UNREACHABLE');
    expect(mail.text).toContain(`SAP is unreachable at http://127.0.0.1:${port}/sap/readiness`);
    expect(mail.text).toContain('ECONNREFUSED');
    const json = JSON.parse((await fx.status(D, true)).out);
    expect(json.error).toMatchObject({ code: 'SAP_UNREACHABLE' });
  });

  it("SAP's body is never parsed as JSON: 200 with an HTML body (sent as application/json) is a success", async () => {
    const D = '2024-09-06';
    const html = '<html><body>Accepted, thank you</body></html>';
    fx.answer((res) => res.writeHead(200, { 'content-type': 'application/json' }).end(html));
    await fx.startApp(D);
    await fx.trigger(D, { flag: true });
    expect(await fx.finished(D)).toMatchObject({ status: 'success', error: null });
    expect(fx.sapRequests(D)).toHaveLength(1);
    expect(await sapSend(D)).toEqual([{ status: 'sent', tries: 1, http_status: 200, response_excerpt: html }]);
  });

  it('a SAP error body that echoes the token: the token is in no run error, status output or mail', async () => {
    const D = '2024-09-07';
    fx.answer((res, _n, req) =>
      res.writeHead(401, { 'content-type': 'application/json' }).end(JSON.stringify({ error: 'invalid_token', received: req.headers.authorization })));
    await fx.startApp(D);
    await fx.trigger(D, { flag: true });
    const run = await fx.finished(D);
    expect(run.status).toBe('failed');
    expect(fx.sapRequests(D)).toHaveLength(1); // a 4xx other than 429 is not retried
    expect(run.error).toContain('SAP answered 401 Unauthorized: {"error":"invalid_token","received":"Bearer ***"}');
    const mail = await theFailureMail(D);
    expect(mail.text).toContain('invalid_token');
    // assertNoSecrets (afterEach) checks the run, its steps, the SAP record, the status output and the mail.
  });
});
