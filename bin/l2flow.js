#!/usr/bin/env -S node --max-semi-space-size=4
// Thin launcher: the CLI is compiled to dist/ and bundled into dist/cli.cjs by `npm run build` (run on install by
// `prepare`; scripts/bundle-cli.mjs says why one file).
// The flag caps V8's young generation at 2 × 4 MiB. Left alone, V8 grows it to 2 × 16 MiB under a burst of runs and
// keeps it: ~24 MiB of RSS that a long-running `l2flow run` never gives back (bench `many`, 1,000 parked runs: 145 →
// 121 MB); the more frequent young collections did not show in the latency benchmarks. It applies when this file is
// executed (npm's `l2flow` bin, `npm start`, the image's entrypoint), not under `node bin/l2flow.js`.
import { createRequire } from 'node:module';

const { main } = createRequire(import.meta.url)('../dist/cli.cjs');

main(process.argv.slice(2)).then(
  (code) => { process.exitCode = code; },
  (err) => { console.error(err instanceof Error ? err.message : String(err)); process.exitCode = 1; },
);
