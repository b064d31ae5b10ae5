import { createRequire } from 'node:module';
import { pino, type DestinationStream, type Logger } from 'pino';
import type { build as PrettyBuild } from 'pino-pretty';
import { Writable } from 'node:stream';
import { redactor, secretsOfUri } from '../lib/connection.js';

/** pino-pretty, loaded for the first pretty logger only (~35 ms: JSON logs, the CLI's silent ones, do without it). */
const prettyStream: typeof PrettyBuild = (...args) => (createRequire(import.meta.url)('pino-pretty') as { build: typeof PrettyBuild }).build(...args);

/** Keys whose values never reach a log line, wherever they appear. */
const REDACT_PATHS = [
  'password', '*.password', 'pass', '*.pass', 'token', '*.token', 'authorization', '*.authorization',
  'headers.authorization', '*.headers.authorization', 'connectionString', '*.connectionString', 'uri', '*.uri',
  'auth', '*.auth',
];

/** How log lines are written: `pretty` (human-readable, for a terminal) or `json` (one object a line). */
export type LogFormat = 'pretty' | 'json';

/** The format of the process's logs: the configured one (L2FLOW_LOG_FORMAT), else pretty on a terminal and JSON otherwise. */
export function logFormatFor(configured: LogFormat | null, stdoutIsTty = Boolean(process.stdout.isTTY)): LogFormat {
  return configured ?? (stdoutIsTty ? 'pretty' : 'json');
}

/**
 * The process logger: pino, secrets removed twice over — by key (`redact`) and by value: every string
 * of a log call is scrubbed of the configured secret values (passwords, tokens), whatever key carried them.
 * Both happen before a line is formatted, so `format: 'pretty'` (pino-pretty, written synchronously so it keeps
 * its order with the CLI's own output) shows only what JSON would. JSON goes to an asynchronous stdout stream.
 */
export function createLogger(opts: { level?: string; secrets?: string[]; destination?: DestinationStream; format?: LogFormat } = {}): Logger {
  const secrets = opts.secrets ?? [];
  const scrub = redactor(secrets);
  const scrubDeep = (v: unknown, depth = 0): unknown => {
    if (typeof v === 'string') return scrub(v);
    if (depth > 4 || v === null || typeof v !== 'object') return v;
    if (v instanceof Error) {
      const copy = Object.assign(new Error(scrub(v.message)), v, { message: scrub(v.message) });
      if (v.stack) copy.stack = scrub(v.stack);
      return copy;
    }
    if (Array.isArray(v)) return v.map((x) => scrubDeep(x, depth + 1));
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, scrubDeep(x, depth + 1)]));
  };
  return pino(
    {
      level: opts.level ?? 'info',
      base: { service: 'l2flow' },
      redact: { paths: REDACT_PATHS, censor: '***' },
      hooks: secrets.length
        ? {
            logMethod(args, method) {
              method.apply(this, args.map((a) => scrubDeep(a)) as Parameters<typeof method>);
            },
          }
        : {},
    },
    opts.format === 'pretty'
      ? prettyStream({
          destination: opts.destination ? asStream(opts.destination) : 1,
          sync: true,
          translateTime: 'SYS:HH:MM:ss.l',
          ignore: 'pid,hostname,service',
          singleLine: true,
          ...(opts.destination ? { colorize: false } : {}),
        })
      : opts.destination ?? pino.destination({ dest: 1, sync: false }),
  );
}

/** pino-pretty pipes into its destination: a bare `{ write }` (allowed by pino and our API) becomes a stream. */
function asStream(d: DestinationStream): NodeJS.WritableStream {
  if (typeof (d as Partial<NodeJS.WritableStream>).on === 'function') return d as unknown as NodeJS.WritableStream;
  return new Writable({
    write(chunk: Buffer, _encoding, done) {
      d.write(chunk.toString());
      done();
    },
  });
}

/** Password and token values found in connection URIs (Airflow's `__extra__` token too), for the logger's value scrubbing. */
export function secretsOf(uris: string[]): string[] {
  return [...new Set(uris.flatMap(secretsOfUri))];
}

export type { Logger };
