import { ConnectionError, CONNECTION_KINDS, parseConnection, redactor, type ConnectionAuth } from '../../../lib/connection.js';

/** 1: Airflow 2's stable REST API (`/api/v1`, basic auth); 2: Airflow 3's public API (`/api/v2`, a token from `/auth/token`). */
export type AirflowApiVersion = 1 | 2;

/** An Airflow webserver (API server) resolved from its connection URI; `root` and `display` carry no secret. */
export interface AirflowEndpoint {
  /** The connection id, named in errors so an operator knows which credentials to fix. */
  connectionId: string;
  /** The webserver's root (scheme, host, port and any base path), without `/api/vN`, ending without a slash. */
  root: string;
  apiVersion: AirflowApiVersion;
  auth: ConnectionAuth;
  /** The URI as a human may see it: the password and tokens masked. */
  display: string;
  /** Removes this connection's secrets, in every form they travel, from text that came back from Airflow. */
  scrub: (text: string) => string;
}

const API_PATH = /\/api\/v([12])\/?$/;

function versionOf(value: string | null | undefined, fail: (problem: string) => never): AirflowApiVersion | undefined {
  if (value === null || value === undefined) return undefined;
  if (value === '1' || value === '2') return Number(value) as AirflowApiVersion;
  return fail(`has api_version=${value.slice(0, 10)}; it must be 1 (Airflow 2) or 2 (Airflow 3)`);
}

/**
 * Parse an Airflow connection URI (`AIRFLOW_CONN_<ID>`) with the one connection parser. The API version comes from
 * the child's `apiVersion`, else the URI's `?api_version=`, else a path ending in `/api/v1` or `/api/v2`; when they
 * disagree or none says, a ConnectionError (which never quotes the URI) says what to write.
 */
export function parseAirflowConnection(uri: string, connectionId: string, apiVersion?: AirflowApiVersion): AirflowEndpoint {
  const parsed = parseConnection(uri, 'airflow');
  const fail = (problem: string): never => {
    throw new ConnectionError('airflow', problem, CONNECTION_KINDS.airflow.help);
  };
  const url = new URL(parsed.url);
  const fromQuery = versionOf(url.searchParams.get('api_version'), fail);
  const pathMatch = API_PATH.exec(url.pathname);
  const fromPath = pathMatch ? (Number(pathMatch[1]) as AirflowApiVersion) : undefined;
  const said = [apiVersion, fromQuery, fromPath].filter((v): v is AirflowApiVersion => v !== undefined);
  if (said.length === 0) fail('does not say which Airflow API to use: add ?api_version=1 (Airflow 2) or ?api_version=2 (Airflow 3), or set the child\'s apiVersion');
  if (new Set(said).size > 1) fail(`says API version ${said.join(' and ')}: keep one (the child's apiVersion, ?api_version= or the /api/vN path)`);
  const base = pathMatch ? url.pathname.slice(0, pathMatch.index) : url.pathname;
  const root = `${url.origin}${base.replace(/\/+$/, '')}`;
  return { connectionId, root, apiVersion: said[0]!, auth: parsed.auth, display: parsed.display, scrub: redactor(parsed.secrets) };
}

/** A secret-free description of the endpoint, for logs and error messages. */
export function describeAirflowEndpoint(ep: AirflowEndpoint): string {
  const auth = ep.auth.type === 'bearer' ? 'a fixed token' : ep.auth.type === 'basic' ? `user "${ep.auth.user}"` : 'no credentials';
  return `Airflow ${ep.apiVersion === 1 ? '2 (/api/v1)' : '3 (/api/v2)'} at ${ep.root} (connection "${ep.connectionId}", ${auth})`;
}
