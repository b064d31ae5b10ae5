import type pg from 'pg';

/** Run `fn` inside a transaction on a client from the pool; rolls back on any error. */
export async function withTransaction<T>(pool: pg.Pool, fn: (client: pg.PoolClient) => Promise<T>): Promise<T> {
  const client = await pool.connect();
  try {
    await client.query('begin');
    const result = await fn(client);
    await client.query('commit');
    return result;
  } catch (err) {
    await client.query('rollback').catch(() => undefined);
    throw err;
  } finally {
    client.release();
  }
}

/** Quote a possibly schema-qualified identifier such as `md.dwh_flag` for safe use in SQL text. */
export function quoteQualified(name: string): string {
  const parts = name.split('.');
  if (parts.length > 2 || parts.some((p) => !/^[A-Za-z_][A-Za-z0-9_$]*$/.test(p))) {
    throw new Error(`"${name}" is not a valid table or view name: write it as schema.name using letters, digits and _`);
  }
  return parts.map((p) => `"${p}"`).join('.');
}
