#!/usr/bin/env -S node --max-semi-space-size=8
// Thin launcher: the CLI is compiled to dist/ and bundled into dist/cli.cjs by `npm run build` (run on install by
// `prepare`; scripts/bundle-cli.mjs says why one file).
// The flag caps V8's young generation at 2 × 8 MiB. Left alone, V8 grows it to 2 × 16 MiB under a burst of runs
// and keeps it: ~14 MiB of RSS that a long-running `l2flow run` never gives back (bench `many`, 1,000 parked runs:
// 145 → 130 MB). A smaller cap promotes more to the old generation, whose collections show in the idle CPU (bench
// `many`, % of a core: V8's default 0.42–0.47, 8 MiB 0.35–0.87, 4 MiB 0.45–1.85 for 121 MB); no latency benchmark
// moved. It applies when this file is executed (npm's `l2flow` bin, `npm start`, the image's entrypoint), not under
// `node bin/l2flow.js`.
import { createRequire } from 'node:module';

const { main } = createRequire(import.meta.url)('../dist/cli.cjs');

main(process.argv.slice(2)).then(
  (code) => { process.exitCode = code; },
  (err) => { console.error(err instanceof Error ? err.message : String(err)); process.exitCode = 1; },
);
