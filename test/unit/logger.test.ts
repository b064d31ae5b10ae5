import { describe, expect, it } from 'vitest';
import { createLogger, logFormatFor, secretsOf } from '../../src/runtime/logger.js';

function capture(secrets: string[]) {
  const lines: string[] = [];
  const logger = createLogger({ level: 'debug', secrets, destination: { write: (s: string) => void lines.push(s) } });
  return { logger, text: () => lines.join('') };
}

describe('logger', () => {
  it('collects the passwords and tokens of connection URIs, including an Airflow __extra__ token', () => {
    const extra = encodeURIComponent(JSON.stringify({ token: 'xtra-T0ken-42', timeout: '30' }));
    const found = secretsOf([
      'postgres://etl:Db%21Pass-77@dwh:5432/dwh',
      'https://sap.example/readiness?token=Sap-T0ken-9',
      `https://sap.example/r?__extra__=${extra}`,
      'smtp://mailer:Mail-Pa55@smtp:587',
    ]);
    expect(found).toEqual(expect.arrayContaining(['Db!Pass-77', 'Sap-T0ken-9', 'xtra-T0ken-42', 'Mail-Pa55']));
    expect(found).not.toContain('30');
  });

  it('removes secret values from messages, nested fields and errors, and secret keys wherever they are', () => {
    const { logger, text } = capture(['Db!Pass-77', 'Sap-T0ken-9']);
    logger.info({ conn: { host: 'dwh', detail: 'login with Db!Pass-77 failed' } }, 'connecting with %s', 'Sap-T0ken-9');
    logger.error({ err: new Error('auth failed for token Sap-T0ken-9') }, 'request failed');
    logger.info({ headers: { authorization: 'Bearer whatever' }, password: 'plain', uri: 'postgres://u:p@h/d' }, 'keys');
    logger.flush();
    const out = text();
    for (const secret of ['Db!Pass-77', 'Sap-T0ken-9', 'Bearer whatever', 'plain', 'u:p@h']) expect(out).not.toContain(secret);
    expect(out).toContain('connecting with ***');
    expect(out).toContain('auth failed for token ***');
  });
});

describe('logger formats', () => {
  it('pretty: human-readable lines (not JSON) with secrets removed by value and by key', () => {
    const lines: string[] = [];
    const logger = createLogger({ format: 'pretty', secrets: ['Db!Pass-77'], destination: { write: (s: string) => void lines.push(s) } });
    logger.info({ detail: 'login with Db!Pass-77 failed', password: 'plain-Secret-1' }, 'connecting with %s', 'Db!Pass-77');
    logger.error({ err: new Error('auth failed for Db!Pass-77') }, 'request failed');
    logger.flush();
    const out = lines.join('');
    expect(out).toMatch(/INFO: connecting with \*\*\*/);
    expect(out).toMatch(/ERROR: request failed/);
    for (const line of out.trim().split('\n')) expect(() => JSON.parse(line)).toThrow();
    for (const secret of ['Db!Pass-77', 'plain-Secret-1']) expect(out).not.toContain(secret);
  });

  it('json: one JSON object a line', () => {
    const lines: string[] = [];
    const logger = createLogger({ format: 'json', destination: { write: (s: string) => void lines.push(s) } });
    logger.info({ n: 1 }, 'one');
    logger.flush();
    expect(JSON.parse(lines.join('').trim())).toMatchObject({ msg: 'one', n: 1 });
  });

  it('unset: pretty on a terminal, JSON otherwise; a configured format wins', () => {
    expect(logFormatFor(null, true)).toBe('pretty');
    expect(logFormatFor(null, false)).toBe('json');
    expect(logFormatFor('json', true)).toBe('json');
    expect(logFormatFor('pretty', false)).toBe('pretty');
  });
});
