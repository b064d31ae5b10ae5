import type { AnyStateMachine, AnyStateNode } from 'xstate';
import { STEP_TABLE, type StepId } from './steps.js';

/**
 * The statechart as a plain graph, read from the machine's own state nodes (never a hand-written copy), for the
 * `l2flow diagram` command, the README's mermaid block and the dashboard. Pure: no I/O.
 *
 * Every state node is a node (ids are XState's, e.g. `wf.branches.reports.run_wf_data_preparation_for_reports.try`);
 * every transition target is an edge. A transition with several targets (entering both parallel regions at once)
 * is one edge per target, sharing `transition`.
 */

export type NodeType = 'atomic' | 'compound' | 'parallel' | 'final' | 'history';

/** How an edge is taken: an invoked actor's success (`done`, also a parallel state's completion), its failure
 * (`error`), an event sent to the run (`event`, e.g. CANCEL), or at once on entry (`always`). */
export type EdgeKind = 'done' | 'error' | 'event' | 'always';

export interface GraphNode {
  /** XState's state id: the machine id and the path, joined by dots. */
  id: string;
  /** The state's key in its parent (`try`, `branches`, `send_flg_to_sap`). */
  key: string;
  /** Keys from the root (the root itself: []). */
  path: string[];
  type: NodeType;
  /** Parent node id; null for the root. */
  parent: string | null;
  /** Child node ids in definition order. */
  children: string[];
  /** Id of the initial child of a compound state. */
  initial?: string;
  /** The workflow step this state is or belongs to (a step state and its `try`/`retry_wait` substates). */
  step?: StepId;
  /** Names of the actors this state invokes (`waitForL2FullLoad`, `retryTimer`). */
  actors?: string[];
}

export interface GraphEdge {
  source: string;
  target: string;
  /** The event type as XState names it (`xstate.error.actor.0.wf.get_load_id.try`, `CANCEL`); '' for `always`. */
  event: string;
  kind: EdgeKind;
  /** Named guard (`mayRetry`, `startsAt`) or `inline`; absent when unguarded. */
  guard?: string;
  /** Action types the transition runs. */
  actions?: string[];
  /** Index of the transition within its source: edges of one multi-target transition share it. */
  transition: number;
}

export interface MachineGraph {
  /** The machine id (`wf`). */
  id: string;
  /** The root first, then depth-first in definition order. */
  nodes: GraphNode[];
  edges: GraphEdge[];
}

const STEP_KEYS = new Set<string>(Object.keys(STEP_TABLE));

function edgeKind(event: string, always: boolean): EdgeKind {
  if (always) return 'always';
  if (event.startsWith('xstate.error.')) return 'error';
  if (event.startsWith('xstate.done.')) return 'done';
  return 'event';
}

function nameOf(x: unknown): string | undefined {
  if (x === undefined || x === null) return undefined;
  if (typeof x === 'string') return x;
  // An inline function is named after its property (`guard`), which says nothing.
  if (typeof x === 'function') return x.name && !['guard', 'actions', 'anonymous'].includes(x.name) ? x.name : 'inline';
  const type = (x as { type?: unknown }).type;
  return typeof type === 'string' ? type : 'inline';
}

/** The machine's graph: every state node and every transition, walked from `machine.root`. */
export function machineGraph(machine: AnyStateMachine): MachineGraph {
  const nodes: GraphNode[] = [];
  const edges: GraphEdge[] = [];
  const walk = (n: AnyStateNode, step: StepId | undefined): void => {
    const ownStep = step ?? (n.parent && STEP_KEYS.has(n.key) ? (n.key as StepId) : undefined);
    const children = Object.values(n.states) as AnyStateNode[];
    const actors = n.invoke.map((i) => nameOf(i.src) ?? 'inline');
    const initialTarget = n.type === 'compound' ? n.initial?.target?.[0] : undefined;
    nodes.push({
      id: n.id,
      key: n.key,
      path: [...n.path],
      type: n.type,
      parent: n.parent?.id ?? null,
      children: children.map((c) => c.id),
      ...(initialTarget ? { initial: initialTarget.id } : {}),
      ...(ownStep ? { step: ownStep } : {}),
      ...(actors.length ? { actors } : {}),
    });
    const transitions = [...[...n.transitions.values()].flat(), ...(n.always ?? [])];
    transitions.forEach((t, index) => {
      const always = t.eventType === '';
      const guard = nameOf(t.guard);
      const actions = (t.actions ?? []).map(nameOf).filter((a): a is string => a !== undefined);
      for (const target of t.target ?? []) {
        edges.push({
          source: n.id,
          target: target.id,
          event: t.eventType,
          kind: edgeKind(t.eventType, always),
          ...(guard ? { guard } : {}),
          ...(actions.length ? { actions } : {}),
          transition: index,
        });
      }
    });
    for (const c of children) walk(c, ownStep);
  };
  walk(machine.root, undefined);
  return { id: machine.root.id, nodes, edges };
}
