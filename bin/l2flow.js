#!/usr/bin/env node
// Thin launcher: the CLI is compiled to dist/ and bundled into dist/cli.cjs by `npm run build` (run on install by
// `prepare`; scripts/bundle-cli.mjs says why one file).
import { createRequire } from 'node:module';

const { main } = createRequire(import.meta.url)('../dist/cli.cjs');

main(process.argv.slice(2)).then(
  (code) => { process.exitCode = code; },
  (err) => { console.error(err instanceof Error ? err.message : String(err)); process.exitCode = 1; },
);
