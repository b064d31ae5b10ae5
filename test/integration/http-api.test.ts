import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { addDays } from '../../src/lib/dates.js';
import { createL2flow } from '../../src/runtime/api.js';
import { ConfigError } from '../../src/runtime/config.js';
import { D, SECRETS, startHttpFixture, type HttpFixture } from '../helpers/http-fixture.js';

// The HTTP API of a started createL2flow(), over real HTTP on 127.0.0.1, against a real warehouse database.

let fx: HttpFixture;
// Runs that wait for a flag nobody inserts: queued or running for the whole file.
const [D1, D2, D3] = [addDays(D, 10), addDays(D, 11), addDays(D, 12)];

beforeAll(async () => {
  fx = await startHttpFixture();
}, 60_000);

afterAll(async () => {
  await fx?.close();
});

describe('HTTP API: probes', () => {
  it('/healthz answers while the process lives; /readyz checks the database, the listener and the migrations', async () => {
    expect(fx.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect(await fx.call('GET', '/healthz')).toMatchObject({ status: 200, body: { ok: true } });
    expect(await fx.call('GET', '/readyz')).toMatchObject({
      status: 200,
      body: { ok: true, checks: { database: { ok: true }, listener: { ok: true }, migrations: { ok: true } } },
    });
  });

  it('/readyz answers 503 naming the migration the database lacks', async () => {
    const { rows } = await fx.db.pool.query<{ version: number; name: string }>(
      'delete from l2flow.schema_migrations where version = (select max(version) from l2flow.schema_migrations) returning version, name',
    );
    try {
      const r = await fx.call('GET', '/readyz');
      expect(r.status).toBe(503);
      expect(r.body).toMatchObject({ ok: false, checks: { database: { ok: true }, listener: { ok: true }, migrations: { ok: false } } });
      expect(r.body.checks.migrations.error).toContain(rows[0]!.name);
      expect(r.body.checks.migrations.error).toContain('l2flow migrate');
    } finally {
      await fx.db.pool.query('insert into l2flow.schema_migrations (version, name) values ($1, $2)', [rows[0]!.version, rows[0]!.name]);
    }
  });

  it('/metrics serves the Prometheus metrics of the runtime; an unknown route answers 404 JSON', async () => {
    const res = await fetch(`${fx.url}/metrics`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/text\/plain/);
    const text = await res.text();
    expect(text).toMatch(/^# TYPE l2flow_runs gauge$/m);
    expect(text).toMatch(/^process_cpu_user_seconds_total /m);
    expect(await fx.call('GET', '/api/nothing')).toMatchObject({ status: 404, body: { error: { code: 'NOT_FOUND' } } });
  });
});

describe('HTTP API: writes need the token', () => {
  it('refuses a write without the token or with a wrong one (401), and changes nothing', async () => {
    for (const token of [false, 'wrong-token-wrong-token'] as const) {
      const r = await fx.call('POST', '/api/runs', { json: { date: D1 }, token });
      expect(r).toMatchObject({ status: 401, body: { error: { code: 'UNAUTHORIZED', field: 'authorization' } } });
    }
    expect((await fx.call('GET', `/api/runs/${D1}`)).status).toBe(404);
  });

  it('trigger: 201 created, then 200 for the same date; the audit actor is the token name', async () => {
    const first = await fx.call('POST', '/api/runs', { json: { date: D1, reason: 'http test' } });
    expect(first).toMatchObject({ status: 201, body: { created: true, run: { run_id: `manual__${D1}`, logical_date: D1 } } });
    expect(first.body.run).not.toHaveProperty('snapshot');
    expect(await fx.call('POST', '/api/runs', { json: { date: D1 } })).toMatchObject({ status: 200, body: { created: false } });
    const run = await fx.call('GET', `/api/runs/${D1}`);
    expect(run.body.audit).toEqual(expect.arrayContaining([expect.objectContaining({ action: 'trigger', actor: 'ops', reason: 'http test' })]));
  });

  it('bad input answers 400 naming the field, and nothing is applied', async () => {
    const bad = async (method: string, path: string, json: unknown, field: string, status = 400) => {
      const r = await fx.call(method, path, { json });
      expect(r.status, r.text).toBe(status);
      expect(r.body.error.field, r.text).toBe(field);
    };
    await bad('POST', '/api/runs', { date: '2024-02-30' }, 'date');
    await bad('POST', '/api/runs', { date: '2020-01-01' }, 'date'); // before the start date
    await bad('POST', '/api/runs', { date: D2, when: 'now' }, 'when');
    await bad('POST', `/api/runs/${D1}/mark`, { status: 'done' }, 'status');
    await bad('POST', `/api/runs/${D1}/clear`, { dryRun: 'yes' }, 'dryRun');
    await bad('POST', '/api/runs/2024-1-1/cancel', {}, 'date');
    const broken = await fetch(`${fx.url}/api/runs`, { method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${SECRETS.token}` }, body: '{"date":' });
    expect(broken.status).toBe(400);
    expect(await broken.json()).toMatchObject({ error: { field: 'body' } });
    const plain = await fetch(`${fx.url}/api/runs`, { method: 'POST', headers: { authorization: `Bearer ${SECRETS.token}` }, body: JSON.stringify({ date: D2 }) });
    expect(plain.status).toBe(415);
    expect((await fx.call('GET', `/api/runs/${D2}`)).status).toBe(404);
  });

  it('cancel: 200, then 409 as it is no longer active, 404 without a run; clear refuses active runs, dry-runs a finished one', async () => {
    expect((await fx.call('POST', '/api/runs', { json: { date: D2 } })).status).toBe(201);
    expect(await fx.call('POST', `/api/runs/${D2}/cancel`, { json: { reason: 'not needed' } })).toMatchObject({
      status: 200, body: { runId: `manual__${D2}`, cancelled: true },
    });
    expect(await fx.call('POST', `/api/runs/${D2}/cancel`, { json: {} })).toMatchObject({ status: 409, body: { error: { code: 'NOT_ACTIVE' } } });
    expect((await fx.call('POST', `/api/runs/${addDays(D, 90)}/cancel`, { json: {} })).status).toBe(404);
    expect(await fx.call('POST', `/api/runs/${D1}/clear`, { json: {} })).toMatchObject({ status: 409, body: { error: { code: 'RUN_ACTIVE' } } });
    expect((await fx.call('POST', `/api/runs/${D2}/clear`, { json: { fromStep: 'nope' } })).body.error).toMatchObject({ code: 'BAD_STEP', field: 'fromStep' });
    const dry = await fx.call('POST', `/api/runs/${D2}/clear`, { json: { dryRun: true, reason: 'look' } });
    expect(dry).toMatchObject({ status: 200, body: { dryRun: true, cleared: [expect.objectContaining({ runId: `manual__${D2}` })] } });
    expect((await fx.call('GET', `/api/runs/${D2}`)).body.status).toBe('cancelled');
    const audit = (await fx.call('GET', `/api/runs/${D2}`)).body.audit as { action: string; actor: string }[];
    expect(audit.filter((a) => a.action === 'cancel')).toEqual([expect.objectContaining({ actor: 'ops', reason: 'not needed' })]);
    const marked = await fx.call('POST', `/api/runs/${D2}/mark`, { json: { status: 'failed', reason: 'by hand' } });
    expect(marked).toMatchObject({ status: 200, body: { runId: `manual__${D2}`, was: 'cancelled', changed: true } });
  });
});

describe('HTTP API: reads', () => {
  it('lists runs newest first, filtered by dates and status, a page at a time', async () => {
    expect((await fx.call('POST', '/api/runs', { json: { date: D3 } })).status).toBe(201);
    const all = await fx.call('GET', `/api/runs?from=${D1}&to=${D3}`);
    expect(all.status).toBe(200);
    expect(all.body.runs.map((r: { logical_date: string }) => r.logical_date)).toEqual([D3, D2, D1]);
    expect(all.body.runs[0]).not.toHaveProperty('snapshot');
    const page = await fx.call('GET', `/api/runs?from=${D1}&to=${D3}&limit=2&offset=1`);
    expect(page.body).toMatchObject({ limit: 2, offset: 1, hasMore: false });
    expect(page.body.runs.map((r: { logical_date: string }) => r.logical_date)).toEqual([D2, D1]);
    expect((await fx.call('GET', `/api/runs?from=${D1}&to=${D3}&limit=1`)).body).toMatchObject({ hasMore: true, runs: [{ logical_date: D3 }] });
    const failed = await fx.call('GET', `/api/runs?status=failed,cancelled`);
    expect(failed.body.runs.map((r: { logical_date: string }) => r.logical_date)).toEqual([D2]);
    expect((await fx.call('GET', `/api/runs?to=${D2}&status=queued,running`)).body.runs.map((r: { logical_date: string }) => r.logical_date)).toEqual([D1]);
  });

  it('a bad list parameter answers 400 naming it', async () => {
    for (const [query, field] of [
      ['limit=0', 'limit'], ['limit=501', 'limit'], ['limit=ten', 'limit'], ['offset=-1', 'offset'],
      ['from=2024-13-01', 'from'], [`from=${D3}&to=${D1}`, 'to'], ['status=done', 'status'], ['stauts=failed', 'stauts'],
    ]) {
      const r = await fx.call('GET', `/api/runs?${query}`);
      expect(r.status, query).toBe(400);
      expect(r.body.error.field, query).toBe(field);
    }
  });

  it('one run with its steps, what it waits on and its audit; 404 without a run, 400 for a bad date', async () => {
    const r = await fx.call('GET', `/api/runs/${D1}`);
    expect(r.status).toBe(200);
    expect(r.body).toMatchObject({ run_id: `manual__${D1}`, failureEmail: [], audit: expect.any(Array) });
    expect(r.body).toHaveProperty('steps');
    expect(r.body).toHaveProperty('waitingOn');
    expect(r.body).not.toHaveProperty('snapshot');
    expect(await fx.call('GET', `/api/runs/${addDays(D, 90)}`)).toMatchObject({ status: 404, body: { error: { code: 'NOT_FOUND' } } });
    expect(await fx.call('GET', '/api/runs/yesterday')).toMatchObject({ status: 400, body: { error: { field: 'date' } } });
  });

  it('no answer shows a secret: the warehouse password, the SAP token, the SMTP password or the API token', async () => {
    const all = fx.bodies.join('\n');
    expect(fx.bodies.length).toBeGreaterThan(20);
    for (const secret of Object.values(SECRETS)) expect(all).not.toContain(secret);
    expect(fx.l2.config.connections.dwh).toContain(SECRETS.warehouse); // the secret was there to leak
  });
});

describe('HTTP API: configuration', () => {
  const config = (http: object) => ({ connections: { dwh: 'postgres://u:p@127.0.0.1/db', sap_conn: 'https://sap.example/x', smtp_default: 'smtp://127.0.0.1:25' }, email: { recipients: ['a@bank.example'] }, children: { wf_data_preparation_for_reports: { kind: 'sql' as const, statement: 'select 1' }, l1_to_l2_p_load_data_ds_client_segmentation_full: { kind: 'sql' as const, statement: 'select 1' } }, http });

  it('refuses a server on a non-loopback address without L2FLOW_API_TOKEN, naming the setting', () => {
    let thrown: unknown;
    try {
      createL2flow({ config: config({ host: '0.0.0.0' }) });
    } catch (err) {
      thrown = err;
    }
    expect(thrown).toBeInstanceOf(ConfigError);
    expect(thrown).toMatchObject({ key: 'L2FLOW_API_TOKEN' });
    expect(() => createL2flow({ config: config({ host: '0.0.0.0' }), env: { L2FLOW_API_TOKEN: `ops:${SECRETS.token}` } })).not.toThrow();
    expect(() => createL2flow({ config: config({ host: '0.0.0.0', enabled: false }) })).not.toThrow();
    expect(() => createL2flow({ config: config({}), env: { L2FLOW_API_TOKEN: 'short' } })).toThrow(/L2FLOW_API_TOKEN.*16 characters/);
    expect(() => createL2flow({ config: config({}), env: { L2FLOW_HTTP_PORT: '70000' } })).toThrow(/L2FLOW_HTTP_PORT/);
  });
});
