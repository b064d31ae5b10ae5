import { existsSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { ENV_KEYS, loadConfig } from '../../src/runtime/config.js';

/**
 * docker-compose.yml and the Dockerfile, checked without a Docker engine (there is none here): their structure,
 * the environment they give l2flow, and that every file and image they name exists.
 */

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const read = (f: string) => readFileSync(path.join(ROOT, f), 'utf8');

interface Service {
  image?: string;
  build?: string | { context?: string; dockerfile?: string };
  command?: string[];
  environment?: Record<string, string>;
  ports?: string[];
  volumes?: string[];
  depends_on?: Record<string, { condition?: string }>;
  healthcheck?: { test: string[] };
}
const compose = parse(read('docker-compose.yml')) as { services: Record<string, Service>; volumes?: Record<string, unknown> };
const services = compose.services;

/** Images known to exist with these tags (Docker Hub); a new image or tag is added here after checking it exists. */
const KNOWN_IMAGES: Record<string, string[]> = {
  postgres: ['15', '16', '17'],
  'axllent/mailpit': ['v1.20.4'],
  node: ['20-bookworm-slim'],
};

/** Variables l2flow reads besides ENV_KEYS: the file, connection URIs (by id) and the API token. */
const readByL2flow = (name: string) =>
  name in ENV_KEYS || name === 'L2FLOW_CONFIG' || name === 'L2FLOW_API_TOKEN' || /^(L2FLOW|AIRFLOW)_CONN_[A-Z0-9_]+$/.test(name);

/** The value compose gives a `${VAR:-default}` / `${VAR:?message}` reference when VAR is not set (the message: a dummy). */
const interpolate = (v: string) => v.replace(/\$\{[A-Z0-9_]+:([-?])([^}]*)\}/g, (_m, op: string, rest: string) => (op === '-' ? rest : 'ops:0123456789abcdef0123'));

describe('docker-compose.yml', () => {
  it('has the four services: postgres, mailpit, sap and l2flow built from the Dockerfile', () => {
    expect(Object.keys(services).sort()).toEqual(['l2flow', 'mailpit', 'postgres', 'sap']);
    const build = services.l2flow!.build;
    expect(typeof build === 'object' ? build : { context: build }).toMatchObject({ context: '.' });
    const dockerfile = (typeof build === 'object' && build.dockerfile) || 'Dockerfile';
    expect(existsSync(path.join(ROOT, dockerfile))).toBe(true);
  });

  it('pins every pulled image to a known tag of a real image', () => {
    for (const [name, s] of Object.entries(services)) {
      if (s.build) continue;
      const [image, tag] = s.image!.split(':');
      expect(KNOWN_IMAGES[image!], `${name}: ${s.image}`).toContain(tag);
    }
  });

  it('gives l2flow only variables it reads, with the secrets from the environment, not the file', () => {
    const env = services.l2flow!.environment!;
    for (const name of Object.keys(env)) expect(readByL2flow(name), `l2flow does not read ${name}`).toBe(true);
    for (const name of ['L2FLOW_CONN_DWH', 'L2FLOW_CONN_SAP_CONN', 'L2FLOW_CONN_SMTP_DEFAULT', 'EMAIL_RECIPIENTS', 'L2FLOW_CONFIG']) {
      expect(env, name).toHaveProperty(name);
    }
    expect(env.L2FLOW_HTTP_HOST).toBe('0.0.0.0');
    // Required off loopback: compose refuses to start without it rather than shipping a placeholder secret.
    expect(env.L2FLOW_API_TOKEN).toMatch(/^\$\{L2FLOW_API_TOKEN:\?.+\}$/);
    expect(env.L2FLOW_CONN_DWH).toMatch(/@postgres:5432\//);
    expect(interpolate(env.L2FLOW_CONN_SAP_CONN!)).toMatch(/^http:\/\/sap:8089\//);
    expect(interpolate(env.L2FLOW_CONN_SMTP_DEFAULT!)).toBe('smtp://mailpit:1025');
    const file = parse(read('config/compose.yaml')) as Record<string, unknown>;
    expect(file).not.toHaveProperty('connections');
    expect(JSON.stringify(file)).not.toMatch(/:\/\//);
  });

  it("l2flow's environment and config file load as `run` loads them", () => {
    const env = Object.fromEntries(Object.entries(services.l2flow!.environment!).map(([k, v]) => [k, interpolate(String(v))]));
    const file = env.L2FLOW_CONFIG!;
    expect(file.startsWith('/app/')).toBe(true);
    const inRepo = path.join(ROOT, file.slice('/app/'.length));
    expect(existsSync(inRepo), `${file} is config/… in the repository`).toBe(true);
    const cfg = loadConfig({ ...env, L2FLOW_CONFIG: inRepo });
    expect(cfg.http).toMatchObject({ enabled: true, host: '0.0.0.0', port: 8780, token: { name: 'ops' } });
    expect(cfg.connections.smtp).toBe('smtp://mailpit:1025');
    expect(Object.keys(cfg.children).sort()).toEqual(
      ['l1_to_l2_p_load_data_ds_client_segmentation_full', 'sys_kill_all_session_pg', 'wf_data_preparation_for_reports'],
    );
  });

  it('publishes the dashboard (8780) and the mail UI (8025)', () => {
    expect(services.l2flow!.ports).toContain('8780:8780');
    expect(services.mailpit!.ports).toContain('8025:8025');
  });

  it('starts l2flow only once every service it needs is healthy, each with a healthcheck', () => {
    const deps = services.l2flow!.depends_on!;
    expect(Object.keys(deps).sort()).toEqual(['mailpit', 'postgres', 'sap']);
    for (const [name, dep] of Object.entries(deps)) {
      expect(dep.condition, name).toBe('service_healthy');
      expect(services[name]!.healthcheck?.test.length, `${name} has a healthcheck`).toBeGreaterThan(0);
    }
  });

  it('mounts only files that exist in the repository', () => {
    for (const [name, s] of Object.entries(services)) {
      for (const v of s.volumes ?? []) {
        const host = v.split(':')[0]!;
        if (!host.startsWith('./')) {
          expect(compose.volumes, `${name}: named volume ${host}`).toHaveProperty(host);
          continue;
        }
        expect(existsSync(path.join(ROOT, host)), `${name} mounts ${host}`).toBe(true);
      }
    }
    expect(services.sap!.command).toEqual(['node', '/sap/sap-stand-in.mjs']);
  });
});

/** The Dockerfile's instructions, continuation lines joined, comments dropped. */
const instructions = read('Dockerfile')
  .replace(/\\\n\s*/g, ' ')
  .split('\n')
  .map((l) => l.trim())
  .filter((l) => l && !l.startsWith('#'));
const stages = instructions.reduce<string[][]>((acc, l) => (l.startsWith('FROM ') ? [...acc, [l]] : (acc.at(-1)!.push(l), acc)), []);

describe('Dockerfile', () => {
  it('is multi-stage from a pinned node 20 image', () => {
    expect(stages.length).toBeGreaterThanOrEqual(2);
    for (const s of stages) expect(s[0]).toMatch(/^FROM node:20-bookworm-slim( AS \w+)?$/);
  });

  it('builds with npm ci, then prunes the dev and optional dependencies (the demo\'s embedded PostgreSQL) without running prepare', () => {
    const build = stages[0]!.join('\n');
    expect(build).toMatch(/RUN npm ci/);
    expect(build).toMatch(/RUN npm run build/);
    expect(build).toMatch(/RUN npm prune --omit=dev --omit=optional --ignore-scripts/);
  });

  it('runs as a user that is not root, exposes 8780 and checks /healthz', () => {
    const runtime = stages.at(-1)!;
    const user = runtime.filter((l) => l.startsWith('USER ')).at(-1);
    expect(user).toBeDefined();
    expect(user).not.toMatch(/^USER (root|0)(:|$)/);
    expect(runtime).toContain('EXPOSE 8780');
    const health = runtime.find((l) => l.startsWith('HEALTHCHECK '));
    expect(health).toMatch(/CMD .*127\.0\.0\.1.*\/healthz/);
  });

  it('copies into the runtime stage only files that exist, and everything l2flow reads at run time', () => {
    const runtime = stages.at(-1)!;
    const copies = runtime.filter((l) => l.startsWith('COPY ')).map((l) => l.split(/\s+/).slice(1));
    const fromContext = copies.filter((args) => !args.some((a) => a.startsWith('--from='))).map((args) => args.slice(0, -1)).flat();
    for (const src of fromContext) expect(existsSync(path.join(ROOT, src)), `COPY ${src}`).toBe(true);
    for (const needed of ['bin', 'sql', 'config', 'src/dashboard', 'package.json']) expect(fromContext, needed).toContain(needed);
    const fromBuild = copies.filter((args) => args.includes('--from=build')).map((args) => args.at(-2));
    expect(fromBuild).toEqual(expect.arrayContaining(['/app/node_modules', '/app/dist/src', '/app/dist/cli.cjs']));
  });

  it('runs the migrations before `run` through its entrypoint, which exists and is a shell script', () => {
    const runtime = stages.at(-1)!;
    const entry = JSON.parse(runtime.find((l) => l.startsWith('ENTRYPOINT '))!.slice('ENTRYPOINT '.length)) as string[];
    const script = entry.at(-1)!.replace(/^\/app\//, '');
    expect(statSync(path.join(ROOT, script)).isFile()).toBe(true);
    const text = read(script);
    expect(text).toMatch(/^#!\/bin\/sh/);
    // The launcher executed as a program, so node runs with the flags of its first line (bin/l2flow.js).
    expect(text).toMatch(/^\s*bin\/l2flow\.js migrate$/m);
    expect(text).toMatch(/^exec bin\/l2flow\.js "\$@"$/m);
    expect(statSync(path.join(ROOT, 'bin/l2flow.js')).mode & 0o111).toBe(0o111);
    expect(runtime).toContain('CMD ["run"]');
    expect(read('.dockerignore').split('\n')).toEqual(expect.arrayContaining(['node_modules', 'dist', 'test-artifacts', '.git', '.l2flow-demo']));
  });
});
