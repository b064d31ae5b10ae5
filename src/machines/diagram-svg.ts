import type { MachineGraph } from './diagram.js';
import { guardNote, operatorView, type OperatorView, type ViewNode } from './diagram-view.js';

/**
 * The statechart as a standalone SVG (no fonts, scripts or links to fetch: the bank has no internet). A simple
 * layered layout, top to bottom: each container's states are ranked by the longest path of the edges between
 * them; a parallel state is a box with its regions side by side. Failure edges are dashed red and run along a
 * "failure bus" on the right; edges from inside a parallel state leave from its box.
 */

const CHAR_W = 7.4;
const BOX_H = 34;
const GAP_X = 28;
const GAP_Y = 38;
const PAD = 14;
const TITLE_H = 20;
const INITIAL_H = 26;
const BULLSEYE = 22;

interface Block {
  w: number;
  h: number;
  /** Draw at (x, y), recording where each view node landed. */
  place(x: number, y: number, at: Map<string, Rect>, out: string[]): void;
}
interface Rect {
  x: number;
  y: number;
  w: number;
  h: number;
}

/** How the dashboard marks a state of one run: running, passed, failed, waiting in a sensor, or stopped (cancelled,
 * also a branch stopped because its sibling failed). */
export type StateMark = 'active' | 'done' | 'failed' | 'waiting' | 'cancelled';

/** Options of toSvg: `marks` by state key (a step id, or success / failed / cancelled); `inlineStyle: false` leaves
 * the `<style>` out, for a page whose Content-Security-Policy refuses inline styles (it links STATECHART_CSS). */
export interface SvgOptions {
  marks?: Readonly<Record<string, StateMark>>;
  inlineStyle?: boolean;
}

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
const text = (x: number, y: number, s: string, cls: string) => `<text x="${x}" y="${y}" class="${cls}">${esc(s)}</text>`;

function layout(view: OperatorView, marks: Readonly<Record<string, StateMark>>) {
  /** A state's group: `data-state` (its key) lets a page find it; `data-mark` and a class say what the run did there. */
  const group = (n: ViewNode) => {
    const mark = marks[n.label];
    return `<g data-state="${esc(n.label)}"${mark ? ` data-mark="${mark}" class="mark-${mark}"` : ''}>`;
  };
  const byId = new Map(view.nodes.map((n) => [n.id, n]));
  const childrenOf = (parent: string | null) => view.nodes.filter((n) => n.parent === parent);
  /** The ancestor of `id` (or itself) that is a direct child of `container`. */
  const liftTo = (id: string, container: string | null): string | undefined => {
    for (let n = byId.get(id); n; n = n.parent ? byId.get(n.parent) : undefined) if (n.parent === container) return n.id;
    return undefined;
  };

  const leaf = (n: ViewNode): Block => {
    if (n.type === 'final' && n.parent !== null) {
      return {
        w: BULLSEYE,
        h: BULLSEYE,
        place(x, y, at, out) {
          at.set(n.id, { x, y, w: BULLSEYE, h: BULLSEYE });
          const c = BULLSEYE / 2;
          out.push(`<circle cx="${x + c}" cy="${y + c}" r="${c - 1}" class="final-ring"/><circle cx="${x + c}" cy="${y + c}" r="${c - 6}" class="final-dot"/>`);
        },
      };
    }
    const w = Math.max(96, Math.ceil(n.label.length * CHAR_W) + 24);
    return {
      w,
      h: BOX_H,
      place(x, y, at, out) {
        at.set(n.id, { x, y, w, h: BOX_H });
        const cls = `state${n.failure ? ' failure' : ''}${n.type === 'final' ? ' final' : ''}`;
        out.push(group(n), `<rect x="${x}" y="${y}" width="${w}" height="${BOX_H}" rx="8" class="${cls}"/>`);
        if (n.type === 'final') out.push(`<rect x="${x + 3}" y="${y + 3}" width="${w - 6}" height="${BOX_H - 6}" rx="6" class="${cls}"/>`);
        out.push(text(x + w / 2, y + BOX_H / 2 + 4, n.label, n.failure ? 'label failure-label' : 'label'), '</g>');
      },
    };
  };

  const framed = (n: ViewNode, inner: Block, cls: string): Block => ({
    w: inner.w + 2 * PAD,
    h: inner.h + TITLE_H + PAD,
    place(x, y, at, out) {
      const w = inner.w + 2 * PAD;
      const h = inner.h + TITLE_H + PAD;
      at.set(n.id, { x, y, w, h });
      out.push(group(n), `<rect x="${x}" y="${y}" width="${w}" height="${h}" rx="10" class="${cls}"/>`);
      out.push(text(x + 10, y + 15, n.type === 'parallel' ? `${n.label} (parallel)` : n.label, 'title'), '</g>');
      inner.place(x + PAD, y + TITLE_H, at, out);
    },
  });

  const blockOf = (n: ViewNode): Block => {
    if (n.children.length === 0) return leaf(n);
    if (n.type !== 'parallel') return framed(n, column(n.id), 'region');
    const regions = n.children.map((id) => blockOf(byId.get(id)!));
    const row: Block = {
      w: regions.reduce((s, b) => s + b.w, 0) + GAP_X * (regions.length - 1),
      h: Math.max(...regions.map((b) => b.h)),
      place(x, y, at, out) {
        let cx = x;
        for (const b of regions) {
          b.place(cx, y, at, out);
          cx += b.w + GAP_X;
        }
      },
    };
    return framed(n, row, 'parallel');
  };

  /** The children of a container in ranks (longest path from its initial state), each rank centred. */
  const column = (container: string | null): Block => {
    const kids = childrenOf(container);
    const rank = new Map<string, number>();
    const first = view.initial.get(container ?? view.root);
    if (first) rank.set(first, 0);
    const inner = view.edges
      .filter((e) => !e.fromAnyState && !(e.kind === 'always' && e.label))
      .map((e) => [liftTo(e.source, container), liftTo(e.target, container)] as const)
      .filter((p): p is readonly [string, string] => p[0] !== undefined && p[1] !== undefined && p[0] !== p[1]);
    for (let changed = true, rounds = 0; changed && rounds < kids.length; rounds++) {
      changed = false;
      for (const [s, t] of inner) {
        const r = rank.get(s);
        if (r !== undefined && (rank.get(t) ?? -1) < r + 1) {
          rank.set(t, r + 1);
          changed = true;
        }
      }
    }
    // States only a run-wide event enters (cancelled) go to the last rank.
    const last = Math.max(0, ...rank.values());
    const ranks: ViewNode[][] = [];
    for (const n of kids) (ranks[rank.get(n.id) ?? last] ??= []).push(n);
    const rows = ranks.filter(Boolean).map((r) => [...r].sort((a, b) => Number(a.failure) - Number(b.failure)).map((n) => ({ n, b: blockOf(n) })));
    const rowW = (r: { b: Block }[]) => r.reduce((s, x) => s + x.b.w, 0) + GAP_X * (r.length - 1);
    const top = first ? INITIAL_H : 0;
    const w = Math.max(...rows.map(rowW));
    const h = top + rows.reduce((s, r) => s + Math.max(...r.map((x) => x.b.h)), 0) + GAP_Y * (rows.length - 1);
    return {
      w,
      h,
      place(x, y, at, out) {
        let cy = y + top;
        for (const r of rows) {
          let cx = x + (w - rowW(r)) / 2;
          for (const { b } of r) {
            b.place(cx, cy, at, out);
            cx += b.w + GAP_X;
          }
          cy += Math.max(...r.map((e) => e.b.h)) + GAP_Y;
        }
        if (first) {
          const f = at.get(first)!;
          const cx = f.x + f.w / 2;
          out.push(`<circle cx="${cx}" cy="${y + 5}" r="5" class="initial"/>`, line(cx, y + 10, cx, f.y, 'edge'));
        }
      },
    };
  };
  return { column, byId };
}

function line(x1: number, y1: number, x2: number, y2: number, cls: string): string {
  return `<path d="M${x1} ${y1} L${x2} ${y2}" class="${cls}"/>`;
}

/** The statechart's styles: inside the standalone SVG, and served as a stylesheet to the dashboard. */
export const STATECHART_CSS = `
  text { font-family: monospace; font-size: 12px; fill: #1a1a1a; }
  .label { text-anchor: middle; } .title { font-weight: bold; fill: #455a64; } .note { fill: #455a64; }
  .state { fill: #e3f2fd; stroke: #1565c0; stroke-width: 1.5; } .final { fill: #e8f5e9; stroke: #2e7d32; }
  .failure { fill: #fde2e2; stroke: #c62828; } .failure-label { fill: #7f0000; }
  .parallel { fill: #fafafa; stroke: #546e7a; stroke-width: 1.5; } .region { fill: #ffffff; stroke: #90a4ae; stroke-dasharray: 4 3; }
  .final-ring { fill: #fff; stroke: #1a1a1a; stroke-width: 1.5; } .final-dot, .initial { fill: #1a1a1a; }
  .edge { fill: none; stroke: #37474f; stroke-width: 1.4; marker-end: url(#arrow); }
  .error { fill: none; stroke: #c62828; stroke-width: 1.4; stroke-dasharray: 6 4; marker-end: url(#arrow-red); }
  .error-label { fill: #c62828; }
  .mark-done rect { fill: #c8e6c9; stroke: #2e7d32; stroke-width: 2.5; }
  .mark-active rect { fill: #b3e5fc; stroke: #0277bd; stroke-width: 3; }
  .mark-waiting rect { fill: #fff3c4; stroke: #f9a825; stroke-width: 3; stroke-dasharray: 5 3; }
  .mark-failed rect { fill: #ffcdd2; stroke: #b71c1c; stroke-width: 3.5; }
  .mark-failed text { fill: #7f0000; font-weight: bold; }
  .mark-cancelled rect { fill: #f3e5f5; stroke: #6d4c7d; stroke-width: 2.5; stroke-dasharray: 2 2; }`;

/** The graph as a standalone SVG document. */
export function toSvg(graph: MachineGraph, options: SvgOptions = {}): string {
  const view = operatorView(graph);
  const { column, byId } = layout(view, options.marks ?? {});
  const body = column(null);
  const at = new Map<string, Rect>();
  const shapes: string[] = [];
  const margin = 20;
  const busX = margin + body.w + 40;
  body.place(margin, margin, at, shapes);

  // Edges that leave a parallel state's inside for the outside are drawn from the parallel box.
  const top = (id: string) => {
    let out = id;
    for (let p = byId.get(id); p; p = p.parent ? byId.get(p.parent) : undefined) if (p.type === 'parallel') out = p.id;
    return out;
  };
  const edges: string[] = [];
  const drawnError = new Set<string>();
  let busTop = Infinity;
  for (const e of view.edges) {
    if (e.fromAnyState || (e.kind === 'always' && e.label)) continue;
    const s = at.get(e.kind === 'error' ? top(e.source) : e.source);
    const t = at.get(e.target);
    if (!s || !t) continue;
    if (e.kind === 'error') {
      const key = `${top(e.source)}>${e.target}`;
      if (drawnError.has(key)) continue;
      drawnError.add(key);
      const sy = s.y + s.h / 2;
      const ty = t.y + t.h / 2;
      busTop = Math.min(busTop, sy);
      edges.push(`<path d="M${s.x + s.w} ${sy} L${busX} ${sy} L${busX} ${ty} L${t.x + t.w} ${ty}" class="error"/>`);
      continue;
    }
    edges.push(line(s.x + s.w / 2, s.y + s.h, t.x + t.w / 2, t.y, 'edge'));
  }
  if (busTop !== Infinity) edges.push(text(busX + 6, busTop + 4, 'error', 'error-label'));

  const notes = [
    ...view.edges.filter((e) => e.fromAnyState).map((e) => `from any state: ${e.label} → ${byId.get(e.target)?.label}`),
    ...[...new Set(view.edges.filter((e) => e.kind === 'always' && e.label).map((e) => `${byId.get(e.source)?.label}: ${guardNote(e.label)}`))],
    ...(view.nodes.some((n) => n.retries) ? ['each step retries in place (try ⇄ retry_wait) when its retry policy allows'] : []),
    'dashed red: the failure route',
  ];
  const notesY = margin + body.h + 30;
  notes.forEach((n, i) => shapes.push(text(margin, notesY + i * 16, n, 'note')));
  const width = Math.ceil(Math.max(busX + 50, margin + Math.max(...notes.map((n) => n.length)) * CHAR_W + margin));
  const height = Math.ceil(notesY + notes.length * 16 + margin);
  return [
    `<?xml version="1.0" encoding="UTF-8"?>`,
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}">`,
    `<title>${esc(graph.id)}: the l2flow statechart</title>`,
    `<defs>${options.inlineStyle === false ? '' : `<style>${STATECHART_CSS}\n</style>`}`,
    `<marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" markerHeight="8" orient="auto-start-reverse"><path d="M0 0 L10 5 L0 10 z" fill="#37474f"/></marker>`,
    `<marker id="arrow-red" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" markerHeight="8" orient="auto-start-reverse"><path d="M0 0 L10 5 L0 10 z" fill="#c62828"/></marker></defs>`,
    `<rect width="100%" height="100%" fill="#ffffff"/>`,
    ...shapes,
    ...edges,
    `</svg>`,
    '',
  ].join('\n');
}
