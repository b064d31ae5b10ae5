import type { MachineGraph } from './diagram.js';
import { guardNote, operatorView, type ViewNode } from './diagram-view.js';

/**
 * The statechart as mermaid `stateDiagram-v2` text (see diagram-view.ts for what is drawn): parallel regions are
 * concurrent composite states separated by `--`, a region's final state is its `[*]`, failure edges are labelled
 * `error` and the failure route's states are styled red.
 */

/** Words mermaid's state-diagram grammar reserves: such a state gets another id and keeps its name as label. */
const RESERVED = new Set(['end', 'state', 'note', 'direction', 'class', 'classDef', 'style', 'as', 'left', 'right', 'of']);

/** Mermaid ids: the state's key, or its path when the key is taken or reserved. */
function mermaidIds(nodes: ViewNode[], root: string): Map<string, string> {
  const ids = new Map<string, string>();
  const used = new Set<string>();
  for (const n of nodes) {
    let id = n.label.replace(/[^A-Za-z0-9_]/g, '_');
    if (used.has(id) || RESERVED.has(id)) id = n.id.slice(root.length + 1).replace(/[^A-Za-z0-9_]/g, '_');
    if (used.has(id) || RESERVED.has(id)) id = `${id}_state`;
    used.add(id);
    ids.set(n.id, id);
  }
  return ids;
}

/** The graph as mermaid `stateDiagram-v2` text, ending with a newline. */
export function toMermaid(graph: MachineGraph): string {
  const view = operatorView(graph);
  const byId = new Map(view.nodes.map((n) => [n.id, n]));
  const ids = mermaidIds(view.nodes, view.root);
  const ref = (id: string) => {
    const n = byId.get(id);
    // A region's final state is drawn as the region's [*].
    return n?.type === 'final' && n.parent !== null ? '[*]' : ids.get(id)!;
  };
  const lines: string[] = ['stateDiagram-v2'];
  const emit = (depth: number, s: string) => lines.push(`${'    '.repeat(depth)}${s}`);

  const initialOf = (parent: string) => {
    const first = view.initial.get(parent);
    return first === undefined ? undefined : ref(first);
  };
  // An edge is written inside the innermost state holding both ends: mermaid places states where first named.
  const parents = (id: string) => {
    const out: (string | null)[] = [];
    for (let p = byId.get(id)?.parent ?? null; ; p = byId.get(p)?.parent ?? null) {
      out.push(p);
      if (p === null) return out;
    }
  };
  const containerOf = (source: string, target: string) => {
    const of = parents(target);
    return parents(source).find((p) => of.includes(p)) ?? null;
  };
  const anyState = 'any_state';
  const notes = new Map<string, Set<string>>();
  const edgeLines = new Map<string | null, string[]>();
  for (const e of view.edges) {
    if (e.kind === 'always' && e.label) {
      notes.set(e.source, (notes.get(e.source) ?? new Set()).add(guardNote(e.label)));
      continue;
    }
    const label = e.kind === 'error' ? 'error' : e.label;
    const container = e.fromAnyState ? null : containerOf(e.source, e.target);
    const line = `${e.fromAnyState ? anyState : ids.get(e.source)} --> ${ref(e.target)}${label ? ` : ${label}` : ''}`;
    edgeLines.set(container, [...(edgeLines.get(container) ?? []), line]);
  }

  const inside = (parent: string | null, depth: number): void => {
    const first = initialOf(parent ?? view.root);
    if (first) emit(depth, `[*] --> ${first}`);
    for (const n of view.nodes.filter((c) => c.parent === parent)) {
      if (n.type === 'final' && parent !== null) continue;
      const id = ids.get(n.id)!;
      if (id !== n.label) emit(depth, `state "${n.label}" as ${id}`);
      if (n.children.length === 0) continue;
      emit(depth, `state ${id} {`);
      if (n.type === 'parallel') {
        n.children.forEach((region, i) => {
          if (i > 0) emit(depth + 1, '--');
          emit(depth + 1, `state ${ids.get(region)} {`);
          inside(region, depth + 2);
          emit(depth + 1, '}');
        });
      } else {
        inside(n.id, depth + 1);
      }
      emit(depth, '}');
    }
    if (parent === null && view.edges.some((e) => e.fromAnyState)) emit(depth, `state "any state" as ${anyState}`);
    for (const line of edgeLines.get(parent) ?? []) emit(depth, line);
  };
  inside(null, 1);

  for (const n of view.nodes) if (n.type === 'final' && n.parent === null) emit(1, `${ids.get(n.id)} --> [*]`);
  for (const [source, texts] of notes) emit(1, `note right of ${ids.get(source)} : ${[...texts].join('; ')}`);
  if (view.nodes.some((n) => n.retries)) emit(1, `%% every step state retries in place (try ⇄ retry_wait) when its retry policy allows`);
  const failure = view.nodes.filter((n) => n.failure).map((n) => ids.get(n.id));
  if (failure.length) {
    emit(1, 'classDef failure fill:#fde2e2,stroke:#c62828,color:#7f0000');
    emit(1, `class ${failure.join(',')} failure`);
  }
  return `${lines.join('\n')}\n`;
}
