import { Registry, Counter } from 'prom-client';
import { NEVER } from 'rxjs';
import { describe, expect, it } from 'vitest';
import { pino } from 'pino';
import { httpApp } from '../../src/runtime/http/index.js';
import type { RunsApi } from '../../src/runtime/http/routes-runs.js';

// The hono application without a socket: /metrics with and without a source, and answers scrubbed of secrets.

const api = { events$: NEVER } as unknown as RunsApi & { events$: typeof NEVER };
const readiness = async () => ({ ok: true, checks: { database: { ok: true }, listener: { ok: true }, migrations: { ok: true } } });

describe('httpApp', () => {
  it('/metrics serves the given registry in Prometheus text format', async () => {
    const registry = new Registry();
    new Counter({ name: 'l2flow_test_total', help: 'a test counter', registers: [registry] }).inc(3);
    const { app } = httpApp({ api, readiness, token: null, secrets: [], logger: pino({ level: 'silent' }), metrics: { contentType: registry.contentType, text: () => registry.metrics() } });
    const res = await app.request('/metrics');
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe(registry.contentType);
    expect(await res.text()).toContain('l2flow_test_total 3');
  });

  it('every string of an answer is scrubbed of the configured secrets and of the API token', async () => {
    const leaky = { ...api, getRun: async () => ({ error: { message: 'password authentication failed: s3cret-Pa55' }, note: 'tok-0123456789abcdef' }) };
    const { app } = httpApp({ api: leaky as never, readiness, token: { name: 'ops', secret: 'tok-0123456789abcdef' }, secrets: ['s3cret-Pa55'], logger: pino({ level: 'silent' }) });
    const text = await (await app.request('/api/runs/2024-03-15')).text();
    expect(text).not.toContain('s3cret-Pa55');
    expect(text).not.toContain('tok-0123456789abcdef');
    expect(text).toContain('password authentication failed');
  });

  it('a body over 64 KiB answers 413 naming the body, before any work', async () => {
    const { app } = httpApp({ api, readiness, token: null, secrets: [], logger: pino({ level: 'silent' }) });
    const res = await app.request('/api/runs', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ reason: 'x'.repeat(70_000) }) });
    expect(res.status).toBe(413);
    expect(await res.json()).toMatchObject({ error: { field: 'body' } });
  });
});
