import { inspect } from 'node:util';
import { describe, expect, it } from 'vitest';
import { ConnectionError, displayUri, parseConnection, redactor, secretsOfUri, type ConnectionKind } from '../../src/lib/connection.js';

const SECRET = 'S3cr3t-Pa55';

describe('parseConnection', () => {
  it('reads a bearer token from ?token= and keeps the other parameters in the url', () => {
    const c = parseConnection(`https://sap.example/flag?token=${SECRET}&sap-client=100`, 'sap');
    expect(c.auth).toEqual({ type: 'bearer', token: SECRET });
    expect(c.url).toBe('https://sap.example/flag?sap-client=100');
    expect(c.display).toBe('https://sap.example/flag?token=***&sap-client=100');
    expect(c.secrets).toContain(SECRET);
  });

  it('reads basic credentials from user:pass@, percent-decoded, and lists every form of the password', () => {
    const c = parseConnection('postgres://etl%20user:p%40ss%2Fw0rd@db.example:5432/dwh', 'postgres');
    expect(c.auth).toEqual({ type: 'basic', user: 'etl user', password: 'p@ss/w0rd' });
    expect(c.url).toBe('postgres://db.example:5432/dwh');
    expect(c.display).toBe('postgres://etl%20user:***@db.example:5432/dwh');
    expect(c.secrets).toEqual(expect.arrayContaining(['p@ss/w0rd', 'p%40ss%2Fw0rd', Buffer.from('etl user:p@ss/w0rd').toString('base64')]));
  });

  it("reads Airflow's __extra__ token (it wins over user:pass@) and collects it, but not the other extras", () => {
    const extra = encodeURIComponent(JSON.stringify({ token: 'xtra-T0ken-42', timeout: '30' }));
    const c = parseConnection(`https://u:${SECRET}@sap.example/r?__extra__=${extra}`, 'sap');
    expect(c.auth).toEqual({ type: 'bearer', token: 'xtra-T0ken-42' });
    expect(c.extra).toEqual({ token: 'xtra-T0ken-42', timeout: '30' });
    expect(c.url).toBe('https://sap.example/r');
    expect(c.secrets).toEqual(expect.arrayContaining(['xtra-T0ken-42', SECRET]));
    expect(c.secrets).not.toContain('30');
    expect(c.display).not.toContain('xtra-T0ken-42');
  });

  it('no credentials: no auth, no secrets', () => {
    expect(parseConnection('smtp://mail.example:587', 'smtp')).toMatchObject({ auth: { type: 'none' }, secrets: [], display: 'smtp://mail.example:587' });
  });

  it('a token authenticates SAP only', () => {
    expect(parseConnection(`smtp://mail.example?token=${SECRET}`, 'smtp').auth).toEqual({ type: 'none' });
  });

  it.each([
    ['postgres', `postgres://u:${SECRET}@db.example/dwh?password=${SECRET}&sslmode=require`],
    ['sap', `https://u:${SECRET}@sap.example/x?api_key=${SECRET}&token=${SECRET}#${SECRET}`],
    ['smtp', `smtps://u:${encodeURIComponent(`${SECRET}@`)}@mail.example:465`],
  ] as const)('the display form of a %s URI never holds the secret', (kind, uri) => {
    const { display } = parseConnection(uri, kind);
    expect(display).not.toContain(SECRET);
    expect(display).toContain('***');
    expect(displayUri(uri)).toBe(display);
  });

  it.each([
    ['postgres', `dwh_user:${SECRET}@db.example/dwh`, /is not a URI/],
    ['postgres', `mysql://u:${SECRET}@db.example/dwh`, /scheme "mysql" but must use postgres or postgresql/],
    ['postgres', `postgres://u:${SECRET}@db.example:54x2/dwh`, /not a valid URI/],
    ['postgres', `postgres://u:${SECRET}%zz@db.example/dwh`, /badly percent-encoded password/],
    ['sap', `https://sap.example/x?__extra__={"token":"${SECRET}"`, /__extra__ parameter that is not valid JSON/],
    ['sap', `https://sap.example/x?__extra__=["${SECRET}"]`, /not a JSON object/],
    ['sap', `https://sap.example/x?token=&other=${SECRET}`, /empty token/],
    ['sap', `https://sap.example/x?__extra__={"token":42,"k":"${SECRET}"}`, /non-string "token"/],
    ['smtp', `smtp://u:${SECRET}@mail.example:587/path`, /must not have a path/],
    ['smtp', `smtp://u:${SECRET}@`, /no host|not a valid URI/],
  ] as const)('%s: rejects %s without quoting the secret', (kind, uri, problem) => {
    let caught: unknown;
    try {
      parseConnection(uri, kind as ConnectionKind);
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(ConnectionError);
    const e = caught as ConnectionError;
    expect(e.message).toMatch(problem);
    expect(e.message).toContain(e.help);
    expect(inspect(e)).not.toContain(SECRET);
  });
});

describe('one redaction rule', () => {
  it('secretsOfUri tolerates any URI and redactor removes every form, longest first', () => {
    expect(secretsOfUri(`not a uri ${SECRET}`)).toEqual([]);
    const secrets = secretsOfUri(`https://u:${SECRET}@h/x?token=tok-${SECRET}`);
    const scrub = redactor(secrets);
    expect(scrub(`token tok-${SECRET}, password ${SECRET}, header Basic ${Buffer.from(`u:${SECRET}`).toString('base64')}`)).toBe(
      'token ***, password ***, header Basic ***',
    );
  });

  it('ignores secrets too short to redact safely', () => {
    expect(redactor(['pw'])('a pw here')).toBe('a pw here');
  });
});
