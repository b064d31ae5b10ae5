import type { EdgeKind, GraphEdge, GraphNode, MachineGraph, NodeType } from './diagram.js';

/**
 * What an operator reads: the machine graph with each step drawn as one state. A step's `try` / `retry_wait`
 * substates (and the retry loop between them) fold into the step; edges are lifted to the states drawn. The JSON
 * graph keeps the full detail; mermaid and SVG both draw this view.
 */

export interface ViewNode {
  id: string;
  /** What is written in the box: the state's key (a step id for steps). */
  label: string;
  type: NodeType;
  /** Parent view node; null at the top level (the root itself is not drawn). */
  parent: string | null;
  children: string[];
  /** Whether a step folded its `try` / `retry_wait` substates into this node (it may retry in place). */
  retries: boolean;
  /** The state is on the failure route (its only way in is an error edge or a run-wide event). */
  failure: boolean;
}

export interface ViewEdge {
  source: string;
  target: string;
  kind: EdgeKind;
  /** Event name for `event` edges (CANCEL); guard name for guarded `always` edges. */
  label: string;
  /** The source is the root: the edge leaves any state (a run-wide event). */
  fromAnyState: boolean;
}

export interface OperatorView {
  root: string;
  /** In the graph's order (parents before children). */
  nodes: ViewNode[];
  edges: ViewEdge[];
  /** Initial child of the root and of each compound node drawn. */
  initial: Map<string, string>;
}

/** The node a graph node is drawn as: itself, or the step state it belongs to. */
function drawnAs(byId: Map<string, GraphNode>): (id: string) => string {
  return (id) => {
    let n = byId.get(id);
    while (n?.parent) {
      const parent = byId.get(n.parent);
      if (!parent?.step) break;
      n = parent;
    }
    return n?.id ?? id;
  };
}

function commonAncestor(byId: Map<string, GraphNode>, ids: string[]): string {
  const chain = (id: string) => {
    const out: string[] = [];
    for (let n = byId.get(id); n; n = n.parent ? byId.get(n.parent) : undefined) out.unshift(n.id);
    return out;
  };
  const chains = ids.map(chain);
  let i = 0;
  while (chains.every((c) => c[i] !== undefined && c[i] === chains[0]![i])) i++;
  return chains[0]![i - 1]!;
}

const GUARD_NOTES: Record<string, string> = { startsAt: 'a cleared run starts at its from-step instead' };

/** What a guarded `always` edge means to an operator (drawn as a note, not as one arrow per possible target). */
export function guardNote(guard: string): string {
  return GUARD_NOTES[guard] ?? `guard ${guard} may go elsewhere`;
}

const PREFERENCE: EdgeKind[] = ['done', 'always', 'event', 'error'];

/** Fold each step into one state and lift edges to the states drawn (see the module comment). */
export function operatorView(graph: MachineGraph): OperatorView {
  const byId = new Map(graph.nodes.map((n) => [n.id, n]));
  const as = drawnAs(byId);
  const root = graph.nodes.find((n) => n.parent === null)!;
  const drawn = graph.nodes.filter((n) => n !== root && as(n.id) === n.id);
  const folded = (n: GraphNode) => !!n.step && n.children.length > 0;

  // One edge per transition: a transition entering both parallel regions is drawn to the parallel state.
  const groups = new Map<string, GraphEdge[]>();
  for (const e of graph.edges) {
    const key = `${e.source}\u0000${e.transition}\u0000${e.event}`;
    groups.set(key, [...(groups.get(key) ?? []), e]);
  }
  const edges = new Map<string, ViewEdge>();
  for (const group of groups.values()) {
    const e = group[0]!;
    const target = group.length > 1 ? commonAncestor(byId, group.map((g) => g.target)) : as(e.target);
    const source = as(e.source);
    if (source === target && source !== root.id) continue; // a step's retry loop, folded into the step
    const label = e.kind === 'event' ? e.event : e.kind === 'always' && e.guard ? e.guard : '';
    const edge: ViewEdge = { source, target, kind: e.kind, label, fromAnyState: source === root.id };
    const key = `${source}\u0000${target}\u0000${label}`;
    const seen = edges.get(key);
    if (!seen || PREFERENCE.indexOf(edge.kind) < PREFERENCE.indexOf(seen.kind)) edges.set(key, edge);
  }
  const viewEdges = [...edges.values()];
  // On the failure route: entered by an error edge, or only from states that are (email_on_failure, failed).
  const onFailureRoute = (id: string, seen = new Set<string>()): boolean => {
    if (seen.has(id)) return false;
    seen.add(id);
    const incoming = viewEdges.filter((e) => e.target === id && e.source !== id);
    return incoming.some((e) => e.kind === 'error') || (incoming.length > 0 && incoming.every((e) => !e.fromAnyState && onFailureRoute(e.source, seen)));
  };

  const initial = new Map<string, string>();
  for (const n of [root, ...drawn]) {
    const first = n.initial ?? (n === root ? graph.nodes.find((c) => c.parent === root.id)?.id : undefined);
    if (first && !folded(n)) initial.set(n.id, first);
  }
  return {
    root: root.id,
    nodes: drawn.map((n) => ({
      id: n.id,
      label: n.key,
      type: folded(n) ? 'atomic' : n.type,
      parent: n.parent === root.id ? null : n.parent,
      children: folded(n) ? [] : n.children,
      retries: folded(n),
      failure: onFailureRoute(n.id),
    })),
    edges: viewEdges,
    initial,
  };
}
