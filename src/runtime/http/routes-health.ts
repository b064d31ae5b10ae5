import { Hono } from 'hono';
import type { Send } from './respond.js';
import type { Readiness } from './readiness.js';

/** Probes and metrics: /healthz (the process answers), /readyz (it can do its work), /metrics (Prometheus text). */

/** What /metrics serves: prom-client's registry has this shape (`contentType`, `metrics()` there is `text()` here). */
export interface MetricsSource {
  contentType: string;
  text(): Promise<string>;
}

/** The routes at the root. */
export function healthRoutes(
  readiness: () => Promise<Readiness>,
  metrics: MetricsSource | undefined,
  send: Send,
) {
  return new Hono()
    .get('/healthz', (c) => send(c, { ok: true }))
    .get('/readyz', async (c) => {
      const r = await readiness();
      return send(c, r, r.ok ? 200 : 503);
    })
    .get('/metrics', async (c) => {
      if (!metrics) return send(c, { error: { code: 'NOT_FOUND', message: 'metrics are not enabled in this process' } }, 404);
      return c.body(await metrics.text(), 200, { 'content-type': metrics.contentType });
    });
}
