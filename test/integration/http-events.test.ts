import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { D, FLAG, SECRETS, startHttpFixture, type HttpFixture } from '../helpers/http-fixture.js';
import { until } from '../helpers/process.js';

// GET /api/events (server-sent events) of a started createL2flow(), and what stop() does to open streams.

let fx: HttpFixture;

beforeAll(async () => {
  fx = await startHttpFixture();
}, 60_000);

afterAll(async () => {
  await fx?.close();
});

/** An SSE client: every chunk of text received, the parsed `run` events, and whether the server ended the stream. */
async function subscribe(url: string) {
  const res = await fetch(`${url}/api/events`);
  expect(res.status).toBe(200);
  expect(res.headers.get('content-type')).toMatch(/^text\/event-stream/);
  const state = { text: '', ended: false, events: [] as { type: string; logicalDate: string; status: string; steps: string[] }[] };
  const reader = res.body!.getReader();
  const decoder = new TextDecoder();
  const done = (async () => {
    for (;;) {
      const { value, done: end } = await reader.read().catch(() => ({ value: undefined, done: true }));
      if (end) break;
      state.text += decoder.decode(value, { stream: true });
      const blocks = state.text.split('\n\n');
      state.events = blocks.filter((b) => b.includes('event: run')).map((b) => JSON.parse(/^data: (.*)$/m.exec(b)![1]!));
    }
    state.ended = true;
  })();
  await until('the stream to say it is subscribed', async () => state.text.includes(': subscribed'), 10_000);
  return { state, done, cancel: () => reader.cancel() };
}

describe('HTTP API: event stream', () => {
  it('streams a run from its start to `finished` (success) as `event: run` messages', async () => {
    const client = await subscribe(fx.url);
    const trigger = await fx.call('POST', '/api/runs', { json: { date: D } });
    expect(trigger.status).toBe(201);
    await fx.db.pool.query('insert into md.dwh_flag (flag_cd, bussines_date) values ($1, $2)', [FLAG, '2024-06-09']);
    await until('the finished event', async () => client.state.events.some((e) => e.type === 'finished' && e.logicalDate === D), 20_000);
    const mine = client.state.events.filter((e) => e.logicalDate === D);
    expect(mine.map((e) => e.type)).toEqual(expect.arrayContaining(['started', 'transition']));
    expect(mine.flatMap((e) => e.steps)).toEqual(expect.arrayContaining(['wait_for_l2_full_load', 'send_flg_to_sap']));
    expect(mine.at(-1)).toMatchObject({ type: 'finished', status: 'success' });
    for (const secret of Object.values(SECRETS)) expect(client.state.text).not.toContain(secret);
    await client.cancel();
    await client.done;
  });

  it('stop() ends open streams and closes the server, so the process can exit', async () => {
    const clients = [await subscribe(fx.url), await subscribe(fx.url)];
    await fx.l2.stop();
    await Promise.all(clients.map((c) => c.done));
    expect(clients.every((c) => c.state.ended)).toBe(true);
    await expect(fetch(`${fx.url}/healthz`)).rejects.toThrow();
    expect(fx.l2.httpUrl).toBe(fx.url);
  });
});
