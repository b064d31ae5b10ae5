import { describe, expect, it } from 'vitest';
import { ConnectionError } from '../../src/lib/connection.js';
import { describeAirflowEndpoint, parseAirflowConnection } from '../../src/services/children/index.js';

const SECRET = 'Af-S3cret%2Fx';

describe('parseAirflowConnection', () => {
  it('takes the API version from the query or the path, keeps a base path, and holds no secret in what it shows', () => {
    const q = parseAirflowConnection(`http://etl:${SECRET}@af.example:8080/?api_version=1`, 'af');
    expect(q).toMatchObject({ root: 'http://af.example:8080', apiVersion: 1, auth: { type: 'basic', user: 'etl', password: 'Af-S3cret/x' } });
    const p = parseAirflowConnection(`https://etl:${SECRET}@af.example/airflow/api/v2/`, 'af');
    expect(p).toMatchObject({ root: 'https://af.example/airflow', apiVersion: 2 });
    expect(parseAirflowConnection('https://af.example/?token=T0ken-abc', 'af', 2)).toMatchObject({ apiVersion: 2, auth: { type: 'bearer', token: 'T0ken-abc' } });
    for (const ep of [q, p]) {
      const shown = `${describeAirflowEndpoint(ep)} ${ep.display} ${ep.root}`;
      expect(shown).not.toContain('Af-S3cret');
      expect(ep.scrub(`echo Af-S3cret/x and ${Buffer.from('etl:Af-S3cret/x').toString('base64')}`)).toBe('echo *** and ***');
    }
  });

  it('refuses a URI that does not say the version, or says two, without quoting it', () => {
    expect(() => parseAirflowConnection(`http://etl:${SECRET}@af.example/`, 'af')).toThrow(/does not say which Airflow API/);
    expect(() => parseAirflowConnection(`http://etl:${SECRET}@af.example/api/v1?api_version=2`, 'af')).toThrow(/says API version 2 and 1/);
    expect(() => parseAirflowConnection(`http://etl:${SECRET}@af.example/?api_version=3`, 'af')).toThrow(ConnectionError);
    let message = '';
    try {
      parseAirflowConnection(`ftp://etl:${SECRET}@af.example/`, 'af', 1);
    } catch (err) {
      message = (err as Error).message;
    }
    expect(message).toMatch(/Airflow connection URI has scheme "ftp"/);
    expect(message).not.toContain('Af-S3cret');
  });
});
