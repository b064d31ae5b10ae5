import { parseFlags, UsageError } from './args.js';
import type { Out } from './cli-io.js';
import { describeConfig, ENV_KEYS, loadConfig, stateIsWarehouse } from './config.js';
import { envValue } from './config-env.js';

/**
 * `l2flow config check [--json]`: load the whole configuration as `run` would (file, environment, connections,
 * token) and print it resolved with every secret masked. Needs no database: nothing connects. A problem is a
 * ConfigError, which main() prints and turns into exit 2.
 */

export const CONFIG_USAGE = `  config check [--json]        load the configuration as \`run\` would and print it resolved, secrets masked;
                               exit 2 naming the key on anything wrong (no database needed)`;

export async function cmdConfig(args: string[], io: Out, env: NodeJS.ProcessEnv = process.env): Promise<number> {
  const [sub, ...rest] = args;
  if (sub !== 'check') {
    throw new UsageError(`config: ${sub === undefined ? 'a subcommand is missing' : `unknown subcommand "${sub}"`}; write l2flow config check [--json]`);
  }
  const f = parseFlags('config check', rest, [{ name: 'json', type: 'boolean', description: 'print the configuration as JSON' }]);
  const loaded = loadConfig(env);
  const cfg = describeConfig(loaded);
  const sources = configSources(env);
  // Where l2flow's own tables live: the warehouse, or the database of connection id `state`.
  const stateDatabase = stateIsWarehouse(loaded) ? 'warehouse' : 'separate';
  if (f.json) {
    io.out(JSON.stringify({ ok: true, sources, stateDatabase, config: cfg }, null, 2));
    return 0;
  }
  io.out(`configuration ok`);
  io.out(`  file: ${sources.file ?? 'none (L2FLOW_CONFIG is not set): defaults and the environment only'}`);
  const fromEnv = Object.entries(sources.environment);
  io.out(`  from the environment: ${fromEnv.length ? fromEnv.map(([v, k]) => `${v} (${k})`).join(', ') : 'nothing'}`);
  io.out(stateDatabase === 'warehouse'
    ? `  l2flow's tables: in the warehouse (connection ${loaded.connectionIds.state} is not set)`
    : `  l2flow's tables: a database of their own, connection ${loaded.connectionIds.state} (not the warehouse)`);
  io.out('');
  const rows = flatten(cfg);
  const width = Math.max(...rows.map(([k]) => k.length));
  for (const [k, v] of rows) io.out(`${k.padEnd(width)}  ${v}`);
  return 0;
}

/** Where the values came from, cheaply: the file named by L2FLOW_CONFIG and the variables of ENV_KEYS that are set. */
export function configSources(env: NodeJS.ProcessEnv): { file: string | null; environment: Record<string, string> } {
  const environment: Record<string, string> = {};
  for (const [variable, setting] of Object.entries(ENV_KEYS)) if (envValue(env, variable) !== undefined) environment[variable] = setting.key;
  // Connection URIs and the token are read apart from ENV_KEYS; their values are secrets, only their names are listed.
  for (const variable of Object.keys(env).sort()) {
    if (/^(L2FLOW|AIRFLOW)_CONN_/.test(variable) && envValue(env, variable) !== undefined) environment[variable] = 'connection URI';
  }
  if (envValue(env, 'L2FLOW_API_TOKEN') !== undefined) environment.L2FLOW_API_TOKEN = 'http.token';
  return { file: envValue(env, 'L2FLOW_CONFIG') ?? null, environment };
}

/** `a.b.c  value` rows of a nested object; lists of plain values are comma separated, other lists JSON. */
function flatten(value: unknown, prefix = ''): [string, string][] {
  if (value !== null && typeof value === 'object' && !Array.isArray(value)) {
    const entries = Object.entries(value as Record<string, unknown>);
    if (entries.length === 0) return [[prefix, '{}']];
    return entries.flatMap(([k, v]) => flatten(v, prefix ? `${prefix}.${k}` : k));
  }
  return [[prefix, show(value)]];
}

function show(v: unknown): string {
  if (v === null || v === undefined) return 'none';
  if (Array.isArray(v)) return v.every((x) => typeof x !== 'object' || x === null) ? (v.length ? v.join(', ') : '[]') : JSON.stringify(v);
  if (v === '') return '""';
  return String(v);
}
