import { createHash } from 'node:crypto';
import type pg from 'pg';
import { StepError } from '../../lib/errors.js';

/** A statement name unique to its text: pg refuses a known name prepared again with another text on a connection. */
function statementName(name: string, text: string): string {
  return `${name}_${createHash('sha1').update(text).digest('hex').slice(0, 10)}`;
}

/**
 * A select-list expression that makes the statement's own (implicit) transaction commit without waiting for its WAL
 * to reach the disk (SET LOCAL synchronous_commit = off, from inside the statement: no extra round trip); the
 * session's setting is untouched. Only for l2flow's bookkeeping that a PostgreSQL crash may lose without harm because
 * it is replayed (a running run's snapshot, a claim, the session killer's memo, SAP's "sent", sensor check records):
 * the next synchronous commit (any memo of a warehouse write, a final status, the SAP record written before a POST)
 * flushes it anyway, since the WAL is written in order. On this server it takes ~0.3 ms off such a commit.
 */
export const ASYNC_COMMIT = `set_config('synchronous_commit', 'off', true)`;

const PREPARED = new Map<string, { name: string; text: string }>();

/**
 * A named (prepared) statement for a hot path: parsed and planned once per connection instead of at every call
 * (the session killer's statement: 1.2–1.6 ms unnamed, 0.35–0.43 ms named, on this server). Only for texts fixed
 * for the process's life (the name carries a hash of the text, so a text built from configuration is safe), never
 * for texts built per call (each would stay prepared on every connection) nor for statements users configure.
 */
export function prepared(name: string, text: string): { name: string; text: string } {
  const key = `${name}\u0000${text}`;
  let p = PREPARED.get(key);
  if (!p) {
    p = { name: statementName(name, text), text };
    PREPARED.set(key, p);
  }
  return p;
}

export interface CheckedOutClient {
  client: pg.PoolClient;
  /** The error the connection died of while checked out, if it did. */
  broken(): Error | undefined;
  /** Return the client; a broken one (or one released with an error) is discarded, never reused. */
  release(err?: unknown): void;
}

/**
 * Check out a pool client that can be held across a server restart. The pool removes its own 'error' listener
 * on checkout, and pg emits 'error' on a client whose connection ends (a restart, pg_terminate_backend) even
 * when a query already got the error: with no listener, that event would crash the process.
 */
export async function checkout(pool: pg.Pool, wait?: { signal: AbortSignal; what: string }): Promise<CheckedOutClient> {
  const client = wait ? await connectAbortably(pool, wait.signal, wait.what) : await pool.connect();
  let broken: Error | undefined;
  const onError = (err: Error) => {
    broken ??= err;
  };
  client.on('error', onError);
  let released = false;
  return {
    client,
    broken: () => broken,
    release(err) {
      if (released) return;
      released = true;
      const reason = broken ?? (err === undefined ? undefined : err instanceof Error ? err : new Error(String(err)));
      // Released with an error, the pool ends the connection: pg then emits nothing more, so the listener can go.
      client.release(reason);
      client.off('error', onError);
    },
  };
}

/** pool.connect(), given up with ABORTED when `signal` fires first (pg's queue cannot be left: a late client goes back). */
async function connectAbortably(pool: pg.Pool, signal: AbortSignal, what: string): Promise<pg.PoolClient> {
  const aborted = () => new StepError('ABORTED', `${what} was cancelled while waiting for a database connection`, { cause: signal.reason });
  if (signal.aborted) throw aborted();
  const connecting = pool.connect();
  let onAbort: (() => void) | undefined;
  const gaveUp = new Promise<never>((_, reject) => {
    onAbort = () => reject(aborted());
    signal.addEventListener('abort', onAbort, { once: true });
  });
  try {
    return await Promise.race([connecting, gaveUp]);
  } catch (err) {
    void connecting.then((c) => c.release(), () => undefined);
    throw err;
  } finally {
    signal.removeEventListener('abort', onAbort!);
  }
}

/**
 * Run `fn` in a transaction on `client`: committed when `commitIf(result)` holds, else rolled back (the result is
 * still returned); on an error rolled back and rethrown. The one shape of a transaction in l2flow. `begun`: the
 * caller sent the BEGIN itself (with a statement of its own in the same round trip).
 */
export async function inTransaction<T>(
  client: pg.ClientBase,
  fn: () => Promise<T>,
  commitIf: (result: T) => boolean = () => true,
  opts: { begun?: boolean } = {},
): Promise<T> {
  if (!opts.begun) await client.query('begin');
  let result: T;
  try {
    result = await fn();
  } catch (err) {
    // A rollback that fails leaves the session unusable: callers discard a connection whose transaction threw.
    await client.query('rollback').catch(() => undefined);
    throw err;
  }
  await client.query(commitIf(result) ? 'commit' : 'rollback');
  return result;
}

/** `inTransaction` on a client from the pool; a client whose transaction threw is discarded, never reused. */
export async function withTransaction<T>(
  pool: pg.Pool,
  fn: (client: pg.PoolClient) => Promise<T>,
  commitIf?: (result: T) => boolean,
): Promise<T> {
  const c = await checkout(pool);
  try {
    const result = await inTransaction(c.client, () => fn(c.client), commitIf);
    c.release();
    return result;
  } catch (err) {
    c.release(err);
    throw err;
  }
}

/** True when `name` is a plain or schema-qualified identifier such as `md.dwh_flag` (letters, digits, _ and $). */
export function isQualifiedName(name: string): boolean {
  const parts = name.split('.');
  return parts.length <= 2 && parts.every((p) => /^[A-Za-z_][A-Za-z0-9_$]*$/.test(p));
}

/** Quote a possibly schema-qualified identifier such as `md.dwh_flag` for safe use in SQL text. */
export function quoteQualified(name: string): string {
  const parts = name.split('.');
  if (!isQualifiedName(name)) {
    throw new Error(`"${name}" is not a valid table or view name: write it as schema.name using letters, digits and _`);
  }
  return parts.map((p) => `"${p}"`).join('.');
}

/** The `$n` placeholders a statement references (a heuristic that also counts `$n` inside literals). */
export function placeholdersIn(statement: string): number[] {
  return [...new Set([...statement.matchAll(/\$(\d+)(?!\d)/g)].map((m) => Number(m[1])))];
}
