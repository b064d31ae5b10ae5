import http from 'node:http';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';

/**
 * A real HTTP server on 127.0.0.1 standing in for an Airflow webserver: Airflow 2's stable API under /api/v1 (basic
 * auth) and Airflow 3's public API under /api/v2 (a bearer token from POST /auth/token), the DAG run endpoints the
 * airflow child uses (trigger, get, clear, patch), with DAG runs whose state advances on every GET along a plan, and
 * scripted answers (401, 404, 409, 5xx) injected before the real ones.
 */

export interface AirflowRequest {
  method: string;
  path: string;
  authorization: string | undefined;
  body: unknown;
}

export interface FakeDagRun {
  dagId: string;
  runId: string;
  state: string;
  conf: unknown;
  logicalDate: unknown;
  /** GETs since the run was created or cleared: the plan's index. */
  gets: number;
  clears: number;
}

/** An answer given instead of the real one to the next `times` requests matching `method` and `path`. */
export interface Injection {
  method?: string;
  path?: RegExp;
  status: number;
  body?: unknown;
  times?: number;
}

export interface TestAirflowServer {
  /** http://127.0.0.1:<port> */
  base: string;
  /** A connection URI for this server with its user and password. */
  uri(apiVersion: 1 | 2, opts?: { password?: string }): string;
  requests: AirflowRequest[];
  runs: Map<string, FakeDagRun>;
  /** States a new (or cleared) run of `dagId` goes through, one per GET; the last one stays. */
  plan(dagId: string, states: string[]): void;
  inject(i: Injection): void;
  /** A run that exists before l2flow asks (someone else triggered it). */
  seed(dagId: string, runId: string, state: string): void;
  /** Every issued token stops working: the next API call gets 401, as when a JWT expires. */
  expireTokens(): void;
  /** Requests of a method whose path matches. */
  count(method: string, path: RegExp): number;
  reset(): void;
  close(): Promise<void>;
}

const DEFAULT_PLAN = ['queued', 'running', 'success'];

/** Start the fake Airflow; `dags` are the DAG ids it knows (others get 404 on trigger). */
export async function startAirflowServer(opts: { user: string; password: string; dags: string[] }): Promise<TestAirflowServer> {
  const requests: AirflowRequest[] = [];
  const runs = new Map<string, FakeDagRun>();
  const plans = new Map<string, string[]>();
  let injections: Injection[] = [];
  let tokens = new Set<string>();
  let issued = 0;
  const basic = `Basic ${Buffer.from(`${opts.user}:${opts.password}`).toString('base64')}`;

  const reply = (res: http.ServerResponse, status: number, body: unknown): void =>
    void res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body ?? {}));
  const view = (r: FakeDagRun) => ({ dag_id: r.dagId, dag_run_id: r.runId, state: r.state, conf: r.conf, logical_date: r.logicalDate });
  const planOf = (dagId: string) => plans.get(dagId) ?? DEFAULT_PLAN;

  function handle(req: AirflowRequest, res: http.ServerResponse): void {
    const injected = injections.find((i) => (!i.method || i.method === req.method) && (!i.path || i.path.test(req.path)));
    if (injected) {
      injected.times = (injected.times ?? 1) - 1;
      if (injected.times <= 0) injections = injections.filter((i) => i !== injected);
      return reply(res, injected.status, injected.body ?? { detail: `injected ${injected.status}`, status: injected.status });
    }
    if (req.method === 'POST' && req.path === '/auth/token') {
      const { username, password } = (req.body ?? {}) as { username?: string; password?: string };
      if (username !== opts.user || password !== opts.password) return reply(res, 401, { detail: 'Invalid credentials' });
      const token = `tok-${++issued}`;
      tokens.add(token);
      return reply(res, 201, { access_token: token });
    }
    const m = /^\/api\/v([12])\/dags\/([^/]+)\/dagRuns(?:\/([^/]+))?(\/clear)?$/.exec(req.path);
    if (!m) return reply(res, 404, { detail: 'no such endpoint' });
    const authorized = m[1] === '1' ? req.authorization === basic : tokens.has(req.authorization?.replace(/^Bearer /, '') ?? '');
    if (!authorized) return reply(res, 401, { detail: 'Unauthorized', status: 401 });
    const dagId = decodeURIComponent(m[2]!);
    if (!opts.dags.includes(dagId)) return reply(res, 404, { detail: `DAG with dag_id: '${dagId}' not found` });
    if (!m[3]) {
      if (req.method !== 'POST') return reply(res, 405, {});
      const body = req.body as { dag_run_id?: string; conf?: unknown; logical_date?: unknown };
      if (m[1] === '2' && !('logical_date' in body)) return reply(res, 422, { detail: 'logical_date: Field required' });
      const runId = body.dag_run_id!;
      const key = `${dagId}/${runId}`;
      if (runs.has(key)) return reply(res, 409, { detail: `DAGRun with DAG ID: '${dagId}' and DAGRun ID: '${runId}' already exists` });
      const run: FakeDagRun = { dagId, runId, state: 'queued', conf: body.conf, logicalDate: body.logical_date, gets: 0, clears: 0 };
      runs.set(key, run);
      return reply(res, 200, view(run));
    }
    const run = runs.get(`${dagId}/${decodeURIComponent(m[3])}`);
    if (!run) return reply(res, 404, { detail: 'DAGRun not found' });
    if (m[4]) {
      if ((req.body as { dry_run?: boolean }).dry_run !== false) return reply(res, 200, { task_instances: [] });
      Object.assign(run, { state: 'queued', gets: 0, clears: run.clears + 1 });
      return reply(res, 200, view(run));
    }
    if (req.method === 'PATCH') {
      run.state = (req.body as { state: string }).state;
      run.gets = -1; // a state set by hand stays
      return reply(res, 200, view(run));
    }
    if (run.gets >= 0) {
      const plan = planOf(dagId);
      run.state = plan[Math.min(run.gets, plan.length - 1)]!;
      run.gets++;
    }
    return reply(res, 200, view(run));
  }

  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const text = Buffer.concat(chunks).toString();
      const r: AirflowRequest = { method: req.method ?? '', path: (req.url ?? '').split('?')[0]!, authorization: req.headers.authorization, body: text ? JSON.parse(text) : undefined };
      requests.push(r);
      handle(r, res);
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;

  return {
    base,
    uri: (apiVersion, o = {}) => `http://${opts.user}:${encodeURIComponent(o.password ?? opts.password)}@127.0.0.1:${new URL(base).port}/?api_version=${apiVersion}`,
    requests,
    runs,
    plan: (dagId, states) => void plans.set(dagId, states),
    inject: (i) => void injections.push({ ...i }),
    seed(dagId, runId, state) {
      runs.set(`${dagId}/${runId}`, { dagId, runId, state, conf: {}, logicalDate: null, gets: -1, clears: 0 });
    },
    expireTokens: () => void (tokens = new Set()),
    count: (method, path) => requests.filter((r) => r.method === method && path.test(r.path)).length,
    reset() {
      requests.length = 0;
      runs.clear();
      plans.clear();
      injections = [];
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
