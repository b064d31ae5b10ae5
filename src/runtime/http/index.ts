/** The HTTP server of `l2flow run` and createL2flow().start(): see server.ts. */
export { startHttpServer, httpApp, type HttpServer, type HttpServerOptions } from './server.js';
export { createReadiness, type Readiness, type Check } from './readiness.js';
export type { MetricsSource } from './routes-health.js';
