import { STATUS_CODES } from 'node:http';
import type { Agent } from 'undici';
import { authorizationValue } from '../../../lib/connection.js';
import { codeInCauses, StepError, throwIfAborted } from '../../../lib/errors.js';
import { retry, type RetryPolicy } from '../../../lib/retry.js';
import type { AirflowEndpoint } from './connection.js';

/** A DAG run's state as Airflow reports it; only `success` and `failed` end the wait. */
export interface DagRun {
  state: string;
}

/** The calls the airflow child makes, each retried on 5xx, 429 and network errors under the child's policy. */
export interface AirflowApi {
  /** The DAG run, or undefined when Airflow has none with this id (404). */
  getDagRun(dagId: string, runId: string, signal: AbortSignal): Promise<DagRun | undefined>;
  /** Trigger a DAG run; 'exists' when Airflow already has one with this id (409). A missing DAG fails, naming it. */
  trigger(dagId: string, body: Record<string, unknown>, signal: AbortSignal): Promise<'created' | 'exists'>;
  /** Clear every task of the run so Airflow runs it again (dry_run false: Airflow's default is a dry run). */
  clear(dagId: string, runId: string, signal: AbortSignal): Promise<void>;
  /** Set the run's state to failed: Airflow stops scheduling its tasks. */
  markFailed(dagId: string, runId: string, signal: AbortSignal): Promise<void>;
}

interface Answer {
  status: number;
  text: string;
}

const READ_CAP_BYTES = 256 * 1024;
const EXCERPT_CHARS = 200;

function excerpt(text: string): string {
  const flat = text.replace(/\s+/g, ' ').trim();
  if (flat === '') return '(empty body)';
  return flat.length > EXCERPT_CHARS ? `${flat.slice(0, EXCERPT_CHARS)}…` : flat;
}

/** A client of one Airflow endpoint for the child `child`; every message it produces is scrubbed of the connection's secrets. */
export function createAirflowApi(deps: { endpoint: AirflowEndpoint; child: string; requestTimeoutMs: number; retry: RetryPolicy }): AirflowApi {
  const { endpoint: ep, child } = deps;
  const api = `${ep.root}/api/v${ep.apiVersion}`;
  // undici is loaded at the first request, not at start-up.
  let client: Promise<{ agent: Agent; request: typeof import('undici').request }> | null = null;
  const http = () =>
    (client ??= import('undici').then(({ Agent, request }) => ({
      agent: new Agent({ connect: { timeout: deps.requestTimeoutMs }, headersTimeout: deps.requestTimeoutMs, bodyTimeout: deps.requestTimeoutMs }),
      request,
    })));
  // Airflow 3 takes no basic auth: the user and password are exchanged for a token, renewed when it expires (401).
  const exchanges = ep.apiVersion === 2 && ep.auth.type === 'basic';
  let token: string | undefined;
  const who = `connection "${ep.connectionId}"${ep.auth.type === 'basic' ? ` (user "${ep.auth.user}")` : ''}`;

  const fail = (message: string, retryable: boolean, details?: Record<string, unknown>) =>
    new StepError('CHILD_FAILED', ep.scrub(`child workflow ${child}: ${message}`), { retryable, details: { airflow: ep.root, ...details } });

  async function send(method: string, url: string, body: unknown, authorization: string | undefined, signal: AbortSignal): Promise<Answer> {
    const headers: Record<string, string> = { accept: 'application/json' };
    if (body !== undefined) headers['content-type'] = 'application/json';
    if (authorization) headers.authorization = authorization;
    const what = `${method} ${url.slice(ep.root.length)}`;
    try {
      const { agent, request } = await http();
      const res = await request(url, { dispatcher: agent, method: method as 'GET', headers, signal, ...(body === undefined ? {} : { body: JSON.stringify(body) }) });
      const chunks: Buffer[] = [];
      let size = 0;
      for await (const chunk of res.body as AsyncIterable<Buffer>) {
        if (size < READ_CAP_BYTES) chunks.push(chunk);
        size += chunk.length;
      }
      return { status: res.statusCode, text: ep.scrub(Buffer.concat(chunks).toString('utf8')) };
    } catch (err) {
      throwIfAborted(signal, `child workflow ${child}`);
      const code = codeInCauses(err);
      const message = err instanceof Error ? err.message : String(err);
      throw fail(`Airflow at ${ep.root} did not answer ${what}: ${code && !message.includes(code) ? `${code} ${message}` : message}`, true);
    }
  }

  /** An answer no retry changes into success: 5xx and 429 are retryable, the rest are not. */
  function refused(method: string, path: string, a: Answer): StepError {
    const retryable = a.status >= 500 || a.status === 429;
    return fail(`Airflow answered ${a.status} ${STATUS_CODES[a.status] ?? ''} to ${method} ${path}: ${excerpt(a.text)}`, retryable, { httpStatus: a.status });
  }

  async function fetchToken(signal: AbortSignal): Promise<string> {
    if (ep.auth.type !== 'basic') throw new Error('only a user and password are exchanged for a token');
    const a = await send('POST', `${ep.root}/auth/token`, { username: ep.auth.user, password: ep.auth.password }, undefined, signal);
    if (a.status === 401 || a.status === 403) {
      throw fail(`Airflow at ${ep.root} refused the credentials of ${who} (POST /auth/token answered ${a.status}): fix the user or password of the connection`, false, { httpStatus: a.status });
    }
    if (a.status < 200 || a.status >= 300) throw refused('POST', '/auth/token', a);
    const parsed = (() => { try { return JSON.parse(a.text) as { access_token?: unknown }; } catch { return undefined; } })();
    if (typeof parsed?.access_token !== 'string') throw fail(`POST /auth/token at ${ep.root} answered without an access_token`, false);
    return parsed.access_token;
  }

  /** One call, retried under the policy; 401 renews Airflow 3's token once before it fails, naming the connection. */
  async function call(method: string, path: string, body: unknown, signal: AbortSignal, okStatuses: number[]): Promise<Answer> {
    return retry(async () => {
      for (let renewed = false; ; renewed = true) {
        if (exchanges && token === undefined) token = await fetchToken(signal);
        const authorization = exchanges ? `Bearer ${token}` : authorizationValue(ep.auth);
        const a = await send(method, `${api}${path}`, body, authorization, signal);
        if (a.status === 401 && exchanges && !renewed) {
          token = undefined; // expired: the next turn asks for a new one
          continue;
        }
        if (a.status === 401 || a.status === 403) {
          const fix = a.status === 401 ? 'fix the user, password or token of the connection' : 'grant the user access to the DAG';
          throw fail(`Airflow at ${ep.root} refused ${method} /api/v${ep.apiVersion}${path} for ${who} (${a.status}): ${fix}`, false, { httpStatus: a.status });
        }
        if (okStatuses.includes(a.status) || (a.status >= 200 && a.status < 300)) return a;
        throw refused(method, `/api/v${ep.apiVersion}${path}`, a);
      }
    }, deps.retry, { what: `child workflow ${child}`, signal });
  }

  const runPath = (dagId: string, runId: string) => `/dags/${encodeURIComponent(dagId)}/dagRuns/${encodeURIComponent(runId)}`;

  return {
    async getDagRun(dagId, runId, signal) {
      const a = await call('GET', runPath(dagId, runId), undefined, signal, [404]);
      if (a.status === 404) return undefined;
      const run = (() => { try { return JSON.parse(a.text) as { state?: unknown }; } catch { return undefined; } })();
      if (typeof run?.state !== 'string') throw fail(`GET of DAG run ${runId} of DAG ${dagId} answered without a state: ${excerpt(a.text)}`, true);
      return { state: run.state };
    },
    async trigger(dagId, body, signal) {
      const a = await call('POST', `/dags/${encodeURIComponent(dagId)}/dagRuns`, body, signal, [404, 409]);
      if (a.status === 409) return 'exists';
      if (a.status === 404) {
        throw fail(`Airflow at ${ep.root} has no DAG "${dagId}" (404 on trigger): check the child's dagId and that the DAG is deployed and parsed`, false, { dagId, httpStatus: 404 });
      }
      return 'created';
    },
    async clear(dagId, runId, signal) {
      await call('POST', `${runPath(dagId, runId)}/clear`, { dry_run: false }, signal, []);
    },
    async markFailed(dagId, runId, signal) {
      await call('PATCH', runPath(dagId, runId), { state: 'failed' }, signal, []);
    },
  };
}
