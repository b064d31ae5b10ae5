import { describe, expect, it } from 'vitest';
import { StepError } from '../../src/lib/errors.js';
import { backoffDelay, retry, type RetryPolicy } from '../../src/lib/retry.js';

const top = () => 0.999_999; // random() just below 1: the top of the jitter range
const bottom = () => 0;

describe('backoffDelay', () => {
  it('doubles from baseDelayMs and stops at maxDelayMs (SAP defaults: 1 s, 2 s, 4 s … 60 s)', () => {
    const sap: RetryPolicy = { maxTries: 5, baseDelayMs: 1_000, maxDelayMs: 60_000, jitter: 'none' };
    expect([1, 2, 3, 4, 5, 6, 7, 8, 50].map((n) => backoffDelay(sap, n))).toEqual([
      1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000, 60_000,
    ]);
  });

  it('waits what the snapshot writer and the failure notifier always waited', () => {
    const writer: RetryPolicy = { maxTries: Infinity, baseDelayMs: 500, maxDelayMs: 2_000, jitter: 'none' };
    expect([1, 2, 3, 4].map((n) => backoffDelay(writer, n))).toEqual([500, 1_000, 2_000, 2_000]);
    const notifier: RetryPolicy = { maxTries: Infinity, baseDelayMs: 250, maxDelayMs: 5_000, jitter: 'none' };
    expect([1, 2, 3, 4, 5, 6, 7].map((n) => backoffDelay(notifier, n))).toEqual([250, 500, 1_000, 2_000, 4_000, 5_000, 5_000]);
  });

  it('honours factor', () => {
    expect(backoffDelay({ maxTries: 9, baseDelayMs: 100, maxDelayMs: 10_000, factor: 3, jitter: 'none' }, 3)).toBe(900);
  });

  it('full jitter stays in [0, wait); equal jitter in [wait/2, wait]', () => {
    const full: RetryPolicy = { maxTries: 5, baseDelayMs: 1_000, maxDelayMs: 60_000 };
    expect(backoffDelay(full, 3, bottom)).toBe(0);
    expect(backoffDelay(full, 3, top)).toBe(3_999);
    const equal: RetryPolicy = { ...full, jitter: 'equal' };
    expect(backoffDelay(equal, 3, bottom)).toBe(2_000);
    expect(backoffDelay(equal, 3, top)).toBe(4_000);
    expect(backoffDelay(equal, 30, top)).toBe(60_000);
    for (let i = 0; i < 200; i++) {
      const f = backoffDelay(full, 5);
      const e = backoffDelay(equal, 5);
      expect(f).toBeGreaterThanOrEqual(0);
      expect(f).toBeLessThan(16_000);
      expect(e).toBeGreaterThanOrEqual(8_000);
      expect(e).toBeLessThanOrEqual(16_000);
    }
  });

  it('the notification hub reconnects 125–250 ms first and 5–10 s from the seventh wait on', () => {
    const hub: RetryPolicy = { maxTries: Infinity, baseDelayMs: 250, maxDelayMs: 10_000, jitter: 'equal' };
    expect([backoffDelay(hub, 1, bottom), backoffDelay(hub, 1, top)]).toEqual([125, 250]);
    expect([backoffDelay(hub, 7, bottom), backoffDelay(hub, 7, top)]).toEqual([5_000, 10_000]);
  });

  it('stays finite for a huge try number, even with a zero base', () => {
    expect(backoffDelay({ maxTries: Infinity, baseDelayMs: 1_000, maxDelayMs: 5_000, jitter: 'none' }, 10_000)).toBe(5_000);
    expect(backoffDelay({ maxTries: Infinity, baseDelayMs: 0, maxDelayMs: 5_000, jitter: 'none' }, 10_000)).toBe(0);
  });
});

const quick: RetryPolicy = { maxTries: 4, baseDelayMs: 1, maxDelayMs: 5, jitter: 'none' };
const transient = () => new StepError('SAP_TIMEOUT', 'no answer', { retryable: true });

describe('retry', () => {
  it('tries again until fn succeeds, reporting each wait', async () => {
    const waits: Array<[number, number]> = [];
    const result = await retry(async (n) => {
      if (n < 3) throw transient();
      return `done on try ${n}`;
    }, quick, { what: 'test', onRetry: (_err, n, ms) => void waits.push([n, ms]) });
    expect(result).toBe('done on try 3');
    expect(waits).toEqual([[1, 1], [2, 2]]);
  });

  it('rethrows the last error once maxTries are used', async () => {
    let tries = 0;
    const err = await retry(async () => {
      tries += 1;
      throw transient();
    }, quick, { what: 'test' }).catch((e: unknown) => e);
    expect(tries).toBe(4);
    expect(err).toMatchObject({ code: 'SAP_TIMEOUT' });
  });

  it('stops at once on an error that is not retryable', async () => {
    let tries = 0;
    const refused = new StepError('SAP_HTTP_ERROR', '422 Unprocessable Entity', { retryable: false });
    const err = await retry(async () => {
      tries += 1;
      throw refused;
    }, quick, { what: 'test' }).catch((e: unknown) => e);
    expect(err).toBe(refused);
    expect(tries).toBe(1);
  });

  it('retries a foreign error only when the database was unreachable, unless told otherwise', async () => {
    let tries = 0;
    const fail = async () => {
      tries += 1;
      throw Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:5432'), { code: 'ECONNREFUSED' });
    };
    await expect(retry(fail, quick, { what: 'test' })).rejects.toThrow('ECONNREFUSED');
    expect(tries).toBe(4);
    tries = 0;
    await expect(retry(fail, quick, { what: 'test', isRetryable: () => false })).rejects.toThrow('ECONNREFUSED');
    expect(tries).toBe(1);
    tries = 0;
    await expect(retry(async () => {
      tries += 1;
      throw new Error('syntax error');
    }, quick, { what: 'test' })).rejects.toThrow('syntax error');
    expect(tries).toBe(1);
  });

  it('uses a requested delay instead of the backoff, capped by maxDelayMs', async () => {
    const waits: number[] = [];
    await retry(async (n) => {
      if (n < 3) throw transient();
    }, quick, { what: 'test', requestedDelayMs: () => 60_000, onRetry: (_e, _n, ms) => void waits.push(ms) });
    expect(waits).toEqual([5, 5]);
  });

  it('gives up instead of waiting past maxElapsedMs', async () => {
    let tries = 0;
    const policy: RetryPolicy = { maxTries: Infinity, baseDelayMs: 20, maxDelayMs: 20, jitter: 'none', maxElapsedMs: 50 };
    await expect(retry(async () => {
      tries += 1;
      throw transient();
    }, policy, { what: 'test' })).rejects.toMatchObject({ code: 'SAP_TIMEOUT' });
    expect(tries).toBeGreaterThanOrEqual(2);
    expect(tries).toBeLessThanOrEqual(3);
  });

  it('an abort during the wait ends it at once with ABORTED, without another try', async () => {
    const ac = new AbortController();
    let tries = 0;
    const started = Date.now();
    const p = retry(async () => {
      tries += 1;
      throw transient();
    }, { maxTries: 5, baseDelayMs: 60_000, maxDelayMs: 60_000, jitter: 'none' }, {
      what: 'send_flg_to_sap',
      signal: ac.signal,
      onRetry: () => void setTimeout(() => ac.abort(), 10),
    });
    await expect(p).rejects.toMatchObject({ code: 'ABORTED', message: 'send_flg_to_sap was cancelled' });
    expect(tries).toBe(1);
    expect(Date.now() - started).toBeLessThan(5_000);
  });

  it('does not start when the signal has already fired', async () => {
    let tries = 0;
    await expect(retry(async () => void (tries += 1), quick, { what: 'test', signal: AbortSignal.abort() })).rejects.toMatchObject({ code: 'ABORTED' });
    expect(tries).toBe(0);
  });
});
