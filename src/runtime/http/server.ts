import type { AddressInfo } from 'node:net';
import type { Server } from 'node:http';
import { serve } from '@hono/node-server';
import { Hono } from 'hono';
import { bodyLimit } from 'hono/body-limit';
import type { Observable } from 'rxjs';
import { redactor } from '../../lib/connection.js';
import { toErrorInfo } from '../../lib/errors.js';
import type { ApiToken } from '../config.js';
import { ConfigError } from '../config.js';
import type { Logger } from '../logger.js';
import type { RunEvent } from '../supervisor.js';
import type { Readiness } from './readiness.js';
import { healthRoutes, type MetricsSource } from './routes-health.js';
import { eventRoutes } from './routes-events.js';
import { runsRoutes, type RunsApi } from './routes-runs.js';
import { dashboardRoutes } from './routes-dashboard.js';
import { errorAnswer, HttpError, jsonWriter } from './respond.js';

/** The HTTP server of a running l2flow: probes, metrics, the JSON API, its event stream and the dashboard (hono on node:http). */

export interface HttpServerOptions {
  host: string;
  /** 0: any free port. */
  port: number;
  /** Required by write endpoints when set. */
  token: ApiToken | null;
  api: RunsApi & { events$: Observable<RunEvent> };
  readiness: () => Promise<Readiness>;
  metrics?: MetricsSource;
  /** Secret values (connection passwords and tokens, the API token) scrubbed from every answer. */
  secrets: string[];
  logger: Logger;
  /** SSE heartbeat comment interval. */
  heartbeatMs?: number;
}

export interface HttpServer {
  /** The bound address, e.g. http://127.0.0.1:8780 (the real port when 0 was asked). */
  url: string;
  /** Ends the event streams, stops accepting, waits for requests in flight (at most `graceMs`, then cuts them). */
  stop(graceMs?: number): Promise<void>;
}

/** The hono application alone (no socket): every route, error answers and the body limit. */
export function httpApp(o: Omit<HttpServerOptions, 'host' | 'port'>) {
  const json = jsonWriter(redactor([...o.secrets, ...(o.token ? [o.token.secret] : [])]));
  const events = eventRoutes(o.api.events$, json.stringify, o.heartbeatMs);
  const app = new Hono()
    .use('/api/*', bodyLimit({ maxSize: 64 * 1024, onError: () => { throw new HttpError(413, 'BAD_REQUEST', 'body: larger than 64 KiB', 'body'); } }))
    .route('/', healthRoutes(o.readiness, o.metrics, json.send))
    .route('/api/runs', runsRoutes(o.api, o.token, json.send))
    .route('/api/events', events.app)
    .route('/', dashboardRoutes(o.api, json.send))
    .notFound((c) => json.send(c, { error: { code: 'NOT_FOUND', message: `no route ${c.req.method} ${c.req.path}: see README "HTTP API"` } }, 404))
    .onError((err, c) => {
      const { status, body } = errorAnswer(err);
      if (status >= 500) o.logger.error({ err: toErrorInfo(err), method: c.req.method, path: c.req.path }, 'HTTP API request failed');
      return json.send(c, body, status);
    });
  return { app, streams: events.streams };
}

/** Bind and serve; a port in use or an address that cannot be bound is a ConfigError naming the setting. */
export async function startHttpServer(o: HttpServerOptions): Promise<HttpServer> {
  const { app, streams } = httpApp(o);
  const server = serve({ fetch: app.fetch, hostname: o.host, port: o.port }) as Server;
  await new Promise<void>((resolve, reject) => {
    const onError = (err: NodeJS.ErrnoException) => {
      const setting = err.code === 'EADDRINUSE' ? 'L2FLOW_HTTP_PORT' : 'L2FLOW_HTTP_HOST';
      reject(new ConfigError(setting, `the HTTP server cannot listen on ${o.host}:${o.port} (${err.code ?? err.message}): set ${setting} (http.${setting === 'L2FLOW_HTTP_PORT' ? 'port' : 'host'}; port 0 takes any free one) or L2FLOW_HTTP_ENABLED=false`));
    };
    server.once('error', onError);
    server.once('listening', () => {
      server.off('error', onError);
      resolve();
    });
  });
  const { address, port } = server.address() as AddressInfo;
  const url = `http://${address.includes(':') ? `[${address}]` : address}:${port}`;
  o.logger.info({ url }, `HTTP API listening on ${url}`);
  let stopping: Promise<void> | undefined;
  return {
    url,
    stop(graceMs = 5000) {
      stopping ??= new Promise<void>((resolve) => {
        streams.endAll();
        const cut = setTimeout(() => server.closeAllConnections(), graceMs);
        // A response that ends after close() leaves its keep-alive socket idle, and close() waits for that socket's
        // keep-alive timeout (5 s): close idle sockets as they appear instead.
        const idle = setInterval(() => server.closeIdleConnections(), 50);
        server.close(() => {
          clearTimeout(cut);
          clearInterval(idle);
          resolve();
        });
      });
      return stopping;
    },
  };
}
