import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { machineGraph } from '../../src/machines/diagram.js';
import { toMermaid } from '../../src/machines/diagram-mermaid.js';
import { toSvg } from '../../src/machines/diagram-svg.js';
import { STEP_IDS, workflowMachine } from '../../src/machines/workflow.js';
import { findReadmeBlock, readmeBlock } from '../../src/runtime/cli-diagram.js';
import { ROOT } from '../helpers/process.js';

const graph = machineGraph(workflowMachine);
const node = (id: string) => graph.nodes.find((n) => n.id === id);

describe('machineGraph', () => {
  it('has a node for every step of STEP_TABLE, carrying its step id and actor', () => {
    for (const step of STEP_IDS) {
      const own = graph.nodes.find((n) => n.key === step);
      expect(own, step).toBeDefined();
      expect(own!.step).toBe(step);
    }
    expect(node('wf.wait_for_l2_full_load.try')).toMatchObject({ type: 'atomic', step: 'wait_for_l2_full_load', actors: ['waitForL2FullLoad'] });
    expect(node('wf.wait_for_l2_full_load.retry_wait')).toMatchObject({ parent: 'wf.wait_for_l2_full_load', actors: ['retryTimer'] });
    expect(node('wf')).toMatchObject({ parent: null, path: [], initial: 'wf.start' });
    // Every edge joins two nodes of the graph.
    const ids = new Set(graph.nodes.map((n) => n.id));
    for (const e of graph.edges) expect(ids.has(e.source) && ids.has(e.target), `${e.source} -> ${e.target}`).toBe(true);
  });

  it('has the parallel state with its two regions and the finals', () => {
    expect(node('wf.branches')).toMatchObject({ type: 'parallel', children: ['wf.branches.reports', 'wf.branches.segmentation_group'] });
    expect(node('wf.branches.reports.done')?.type).toBe('final');
    for (const f of ['success', 'failed', 'cancelled']) expect(node(`wf.${f}`)?.type).toBe('final');
  });

  it('routes every step failure to email_on_failure, then failed; retries go to retry_wait', () => {
    for (const step of STEP_IDS.filter((s) => s !== 'email_on_failure')) {
      const errors = graph.edges.filter((e) => e.kind === 'error' && node(e.source)?.step === step);
      expect(errors.map((e) => e.target), step).toContain('wf.email_on_failure');
      expect(errors.some((e) => e.guard === 'mayRetry' && e.target.endsWith('.retry_wait')), step).toBe(true);
    }
    expect(graph.edges.filter((e) => e.source === 'wf.email_on_failure').map((e) => [e.kind, e.target])).toEqual([
      ['done', 'wf.failed'],
      ['error', 'wf.failed'],
    ]);
    expect(graph.edges).toContainEqual(expect.objectContaining({ source: 'wf', target: 'wf.cancelled', event: 'CANCEL', kind: 'event' }));
    expect(graph.edges).toContainEqual(expect.objectContaining({ source: 'wf.branches', target: 'wf.end', kind: 'done' }));
  });
});

describe('toMermaid', () => {
  const text = toMermaid(graph);
  it('draws each step once, the regions as concurrent states and the failure route', () => {
    expect(text.startsWith('stateDiagram-v2\n')).toBe(true);
    for (const step of STEP_IDS) expect(text, step).toMatch(new RegExp(`\\b${step}\\b`));
    const drawn = text.split('\n').filter((l) => !l.trim().startsWith('%%')).join('\n');
    expect(drawn).not.toMatch(/\btry\b|retry_wait/);
    expect(text).toMatch(/state branches \{\n\s+state reports \{[\s\S]*\n\s+--\n\s+state segmentation_group \{/);
    expect(text).toContain('send_flg_to_sap --> email_on_failure : error');
    expect(text).toContain('email_on_failure --> failed');
  });

  it('is the diagram in the README', () => {
    const readme = readFileSync(path.join(ROOT, 'README.md'), 'utf8');
    const current = findReadmeBlock(readme);
    const expected = readmeBlock(text);
    expect(current, 'README.md has no diagram block between its diagram:start and diagram:end markers').not.toBeNull();
    if (current !== expected) {
      expect.fail('the statechart in README.md is out of date: run `npm run diagram:readme` (node bin/l2flow.js diagram --readme README.md) and commit README.md');
    }
  });
});

describe('toSvg', () => {
  const svg = toSvg(graph);
  it('is a standalone, well-formed SVG with every step', () => {
    expect(svg).toMatch(/^<\?xml [^>]*\?>\n<svg xmlns="http:\/\/www\.w3\.org\/2000\/svg"/);
    // Nothing to fetch: the only URL is the SVG namespace.
    expect(svg.match(/https?:\/\/[^"\s)]+/g)).toEqual(['http://www.w3.org/2000/svg']);
    expect(svg).not.toMatch(/<script|<image|@import|href=/);
    for (const step of STEP_IDS) expect(svg, step).toContain(`>${step}</text>`);
    expect(svg).toContain('class="error"');
    expectWellFormed(svg);
  });

  it('marks the states of a run by key, and leaves the inline style out for a page that links it', () => {
    const marked = toSvg(graph, { marks: { send_flg_to_sap: 'failed', get_load_id: 'done', failed: 'failed' }, inlineStyle: false });
    expect(marked).toContain('<g data-state="send_flg_to_sap" data-mark="failed" class="mark-failed">');
    expect(marked).toContain('<g data-state="get_load_id" data-mark="done" class="mark-done">');
    expect(marked).toContain('<g data-state="branches">');
    expect(marked).not.toContain('<style>');
    expect(svg).toContain('<style>');
    expectWellFormed(marked);
  });
});

/** A small XML check: every tag closes in order, attributes are quoted, no stray `&` or `<`. */
function expectWellFormed(xml: string): void {
  const body = xml.replace(/^<\?xml[^?]*\?>\n/, '');
  const stack: string[] = [];
  const tag = /<(\/?)([A-Za-z][\w-]*)((?:\s+[\w:-]+="[^"<]*")*)\s*(\/?)>|<!\[CDATA\[|&(?!(amp|lt|gt|quot|apos);)|<(?![A-Za-z/])/g;
  for (const m of body.matchAll(tag)) {
    if (m[2] === undefined) expect.fail(`stray markup at ${m.index}: ${body.slice(m.index!, m.index! + 30)}`);
    if (m[4]) continue;
    if (m[1]) expect(stack.pop(), `closing </${m[2]}> at ${m.index}`).toBe(m[2]);
    else stack.push(m[2]);
  }
  expect(stack).toEqual([]);
  // What the tag pattern did not consume must be text (no half-written tags).
  expect(body.replace(tag, '')).not.toMatch(/[<>]/);
}
