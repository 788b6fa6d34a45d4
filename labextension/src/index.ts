/**
 * nbship inside JupyterLab: each cell shows its role and step (a badge, the step's colour
 * at the margin), the analysis's problems appear on the cells and lines they name while
 * the notebook is edited, and a side panel shows the step graph, the parameters and the
 * metrics, with buttons that run the notebook as a pipeline and test it.
 *
 * Everything it knows comes from nbship's Jupyter Server extension (nbship/lab): the
 * analysis is `nbship check`'s, in the CLI's words; runs and tests are `nbship run` and
 * `nbship test` started by the server, their output streamed as server-sent events.
 */
import {
  ILabShell,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { Dialog, showDialog } from '@jupyterlab/apputils';
import { URLExt } from '@jupyterlab/coreutils';
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { IRenderMimeRegistry, MimeModel } from '@jupyterlab/rendermime';
import { ServerConnection } from '@jupyterlab/services';
import { Widget } from '@lumino/widgets';

interface Problem {
  severity: string;
  kind: string;
  message: string;
  cell: number | null;
  line: number | null;
  hint: string | null;
}

interface Step {
  name: string;
  cells: { index: number; id: string | null }[];
}

interface Analysis {
  path: string;
  steps: Step[];
  problems: Problem[];
  mermaid: string;
  parameters: Record<string, { type: string; default: unknown }>;
  metrics: Record<string, string>;
  message?: string;
}

const ROLES = [
  'imports',
  'functions',
  'parameters',
  'pipeline-metrics',
  'skip',
  'serve'
];
const DEBOUNCE_MS = 400;

async function api(path: string, init: RequestInit = {}): Promise<any> {
  const settings = ServerConnection.makeSettings();
  const url = URLExt.join(settings.baseUrl, 'nbship', path);
  const reply = await ServerConnection.makeRequest(url, init, settings);
  const body = await reply.json();
  if (!reply.ok && !(body && body.message)) {
    throw new Error(`nbship: ${reply.status} ${reply.statusText}`);
  }
  return body;
}

/** The role a cell's tags give it, as nbship reads them (step:NAME, block:NAME, ...). */
function roleOf(tags: string[]): string | null {
  for (const tag of tags) {
    if (tag.startsWith('step:') || tag.startsWith('block:')) {
      return 'step';
    }
    if (ROLES.includes(tag) || tag === 'pipeline-parameters') {
      return tag === 'pipeline-parameters' ? 'parameters' : tag;
    }
  }
  return null;
}

function tagsOf(panel: NotebookPanel, index: number): string[] {
  const cell = panel.content.widgets[index];
  const tags = cell?.model.getMetadata('tags');
  return Array.isArray(tags) ? tags.map(String) : [];
}

/** The tags a form's answers stand for, keeping the tags nbship does not own. */
export function withRole(
  tags: string[],
  role: string,
  step: string,
  prev: string,
  image = '',
  limits = ''
): string[] {
  const kept = tags.filter(
    t =>
      !t.startsWith('step:') &&
      !t.startsWith('block:') &&
      !t.startsWith('prev:') &&
      !t.startsWith('image:') &&
      !t.startsWith('limit:') &&
      !ROLES.includes(t) &&
      t !== 'pipeline-parameters'
  );
  const words = (text: string) =>
    text
      .split(/[ ,]+/)
      .map(s => s.trim())
      .filter(Boolean);
  if (role === 'step' && step) {
    kept.push(`step:${step}`);
    for (const p of words(prev)) {
      kept.push(`prev:${p}`);
    }
    if (image.trim()) {
      kept.push(`image:${image.trim()}`);
    }
    for (const limit of words(limits)) {
      const [resource, value] = limit.split('=');
      if (resource && value) {
        kept.push(`limit:${resource}:${value}`);
      }
    }
  } else if (ROLES.includes(role)) {
    kept.push(role);
  }
  return kept;
}

/** Badges, colours and problems on one notebook's cells. */
class CellMarks {
  constructor(private panel: NotebookPanel) {}

  show(analysis: Analysis): void {
    const stepOf = new Map<number, [string, number]>();
    analysis.steps.forEach((step, k) =>
      step.cells.forEach(c => stepOf.set(c.index, [step.name, k]))
    );
    const problems = new Map<number, Problem[]>();
    for (const p of analysis.problems) {
      if (p.cell !== null) {
        problems.set(p.cell, [...(problems.get(p.cell) ?? []), p]);
      }
    }
    this.panel.content.widgets.forEach((cell, index) => {
      const node = cell.node;
      node.querySelectorAll('.nbship-badge, .nbship-problems').forEach(e => e.remove());
      for (const c of Array.from(node.classList)) {
        if (c.startsWith('nbship-step-') || c === 'nbship-has-problem') {
          node.classList.remove(c);
        }
      }
      if (cell.model.type !== 'code') {
        return;
      }
      const step = stepOf.get(index);
      const role = roleOf(tagsOf(this.panel, index));
      const badge = document.createElement('div');
      badge.className = 'nbship-badge';
      if (step) {
        badge.textContent = `step ${step[0]}`;
        badge.dataset.step = step[0];
        node.classList.add(`nbship-step-${step[1] % 8}`);
      } else if (role && role !== 'step') {
        badge.textContent = role;
        badge.dataset.role = role;
      } else {
        badge.textContent = 'not in a step';
        badge.classList.add('nbship-badge-none');
      }
      node.prepend(badge);
      const mine = problems.get(index);
      if (mine) {
        node.classList.add('nbship-has-problem');
        const list = document.createElement('div');
        list.className = 'nbship-problems';
        for (const p of mine) {
          const item = document.createElement('div');
          item.className = `nbship-problem nbship-${p.severity}`;
          item.dataset.line = String(p.line ?? '');
          item.textContent =
            (p.line ? `line ${p.line}: ` : '') +
            p.message +
            (p.hint ? ` (hint: ${p.hint})` : '');
          list.appendChild(item);
        }
        node.appendChild(list);
      }
    });
  }
}

/** The side panel: graph, parameters, metrics, Run/Test and their output. */
class NbshipPanel extends Widget {
  private current: NotebookPanel | null = null;
  private publish: HTMLButtonElement | null = null;
  private readonly graph = document.createElement('div');
  private readonly facts = document.createElement('div');
  private readonly steps = document.createElement('table');
  private readonly output = document.createElement('pre');
  private readonly state = document.createElement('div');

  constructor(private rendermime: IRenderMimeRegistry) {
    super();
    this.id = 'nbship-panel';
    this.title.label = 'nbship';
    this.title.caption = 'nbship: steps, graph, run and test';
    this.addClass('nbship-panel');
    const buttons = document.createElement('div');
    buttons.className = 'nbship-buttons';
    for (const [label, kind] of [
      ['Run as pipeline', 'run'],
      ['Test', 'test'],
      ['Publish', 'publish']
    ]) {
      const b = document.createElement('button');
      b.className = `jp-mod-styled jp-mod-accept nbship-${kind}`;
      b.textContent = label;
      b.onclick = () => void this.start(kind);
      buttons.appendChild(b);
    }
    this.publish = buttons.querySelector('button.nbship-publish');
    void this.configure();
    const edit = document.createElement('button');
    edit.className = 'jp-mod-styled nbship-edit';
    edit.textContent = 'Step of this cell…';
    edit.onclick = () => void this.editActiveCell();
    buttons.appendChild(edit);
    this.state.className = 'nbship-state';
    this.steps.className = 'nbship-steps';
    this.output.className = 'nbship-output';
    this.graph.className = 'nbship-graph';
    this.facts.className = 'nbship-facts';
    for (const e of [
      buttons,
      this.state,
      this.steps,
      this.graph,
      this.facts,
      this.output
    ]) {
      this.node.appendChild(e);
    }
  }

  /** Publish only where the server has a registry to publish to. */
  private async configure(): Promise<void> {
    const config = await api('config').catch(() => ({ registry: null }));
    if (this.publish) {
      this.publish.disabled = !config.registry;
      this.publish.title = config.registry
        ? `nbship publish to ${config.registry}`
        : 'no registry: set [tool.nbship] registry in pyproject.toml, or nbship registry up';
    }
  }

  follow(panel: NotebookPanel | null, analysis: Analysis | null): void {
    this.current = panel;
    if (!analysis) {
      return;
    }
    if (analysis.message) {
      this.facts.textContent = analysis.message;
      return;
    }
    const md = '```mermaid\n' + analysis.mermaid + '\n```\n';
    const renderer = this.rendermime.createRenderer('text/markdown');
    void renderer
      .renderModel(new MimeModel({ data: { 'text/markdown': md } }))
      .then(() => {
        this.graph.replaceChildren(renderer.node);
      });
    const params = Object.entries(analysis.parameters)
      .map(([k, v]) => `${k}: ${v.type} = ${JSON.stringify(v.default)}`)
      .join('\n');
    const metrics = Object.entries(analysis.metrics)
      .map(([k, step]) => `${k} (step ${step})`)
      .join('\n');
    this.facts.replaceChildren();
    for (const [title, text] of [
      ['Parameters', params || '(none)'],
      ['Metrics', metrics || '(none)'],
      [
        'Problems',
        analysis.problems.length
          ? analysis.problems
              .map(
                p =>
                  `cell ${p.cell ?? '-'}, line ${p.line ?? '-'}: ${p.message}`
              )
              .join('\n')
          : '(none)'
      ]
    ]) {
      const h = document.createElement('h4');
      h.textContent = title;
      const pre = document.createElement('pre');
      pre.className = `nbship-${title.toLowerCase()}`;
      pre.textContent = text;
      this.facts.append(h, pre);
    }
  }

  private async editActiveCell(): Promise<void> {
    const panel = this.current;
    const cell = panel?.content.activeCell;
    if (!panel || !cell || cell.model.type !== 'code') {
      return;
    }
    const tags = tagsOf(panel, panel.content.activeCellIndex);
    const form = new StepForm(tags);
    const answer = await showDialog({
      title: 'nbship: the role and step of this cell',
      body: form,
      buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Set' })]
    });
    if (answer.button.accept) {
      const { role, step, prev, image, limits } = form.values();
      cell.model.setMetadata(
        'tags',
        withRole(tags, role, step, prev, image, limits)
      );
      await panel.context.save();
    }
  }

  private async start(kind: string): Promise<void> {
    const panel = this.current;
    if (!panel) {
      return;
    }
    await panel.context.save();
    this.output.textContent = '';
    this.steps.replaceChildren();
    const doing: Record<string, string> = {
      run: 'running',
      test: 'testing',
      publish: 'publishing'
    };
    this.state.textContent = `${doing[kind]} ${panel.context.path}…`;
    this.state.dataset.status = 'running';
    const job = await api('jobs', {
      method: 'POST',
      body: JSON.stringify({ kind, path: panel.context.path })
    });
    if (!job.id) {
      this.state.textContent = job.message ?? 'could not start';
      this.state.dataset.status = 'failed';
      return;
    }
    const settings = ServerConnection.makeSettings();
    const events = new EventSource(
      URLExt.join(settings.baseUrl, 'nbship', 'jobs', job.id, 'events')
    );
    events.addEventListener('line', (e: MessageEvent) => {
      const line = JSON.parse(e.data) as string;
      this.output.textContent += line + '\n';
      this.output.scrollTop = this.output.scrollHeight;
      const m = /^\s+(\S+)\s+(ran|cached|failed|FAILED)\b\s*(.*)$/.exec(line);
      if (m && kind === 'run') {
        const row = document.createElement('tr');
        row.className = `nbship-step-status nbship-${m[2].toLowerCase()}`;
        row.dataset.step = m[1];
        row.dataset.status = m[2].toLowerCase();
        for (const text of [m[1], m[2], m[3]]) {
          const td = document.createElement('td');
          td.textContent = text;
          row.appendChild(td);
        }
        this.steps.appendChild(row);
      }
    });
    events.addEventListener('end', (e: MessageEvent) => {
      events.close();
      const end = JSON.parse(e.data);
      const lines = this.output.textContent ?? '';
      const metrics = /^metrics: (.*)$/m.exec(lines);
      const passed = /(\d+) passed/.exec(lines);
      this.state.dataset.status = end.status;
      this.state.textContent =
        `${kind} ${end.status}` +
        (metrics ? ` — ${metrics[1]}` : '') +
        (passed && kind === 'test' ? ` — ${passed[1]} passed` : '');
      const provenance = /^provenance: (.*)$/m.exec(lines);
      if (provenance) {
        const p = document.createElement('div');
        p.className = 'nbship-provenance';
        p.textContent = `provenance: ${provenance[1]}`;
        this.state.appendChild(p);
      }
      const error = /^nbship: error: (.*)$/m.exec(lines);
      if (end.status === 'failed' && error) {
        const e = document.createElement('div');
        e.className = 'nbship-error-message';
        e.textContent = error[1];
        this.state.appendChild(e);
      }
      const where = /cell (\d+)(?: \(id [^)]*\))?, line (\d+)/.exec(lines);
      if (end.status === 'failed' && where && this.current) {
        const notebook = this.current.content;
        notebook.activeCellIndex = Number(where[1]);
        void notebook.scrollToItem(Number(where[1]));
        notebook.activeCell?.editor?.setCursorPosition({
          line: Number(where[2]) - 1,
          column: 0
        });
      }
    });
  }
}

/** The tag form: role, step name, previous steps. */
class StepForm extends Widget {
  private role = document.createElement('select');
  private step = document.createElement('input');
  private prev = document.createElement('input');
  private image = document.createElement('input');
  private limits = document.createElement('input');

  constructor(tags: string[]) {
    super();
    this.addClass('nbship-form');
    for (const r of ['step', ...ROLES, 'none']) {
      const o = document.createElement('option');
      o.value = r;
      o.textContent = r;
      this.role.appendChild(o);
    }
    const step = tags.find(t => t.startsWith('step:') || t.startsWith('block:'));
    this.role.value = step ? 'step' : (roleOf(tags) ?? 'none');
    this.role.name = 'role';
    this.step.name = 'step';
    this.step.value = step ? step.split(':')[1] : '';
    this.prev.name = 'prev';
    this.prev.value = tags
      .filter(t => t.startsWith('prev:'))
      .map(t => t.slice(5))
      .join(', ');
    this.image.name = 'image';
    this.image.value = (tags.find(t => t.startsWith('image:')) ?? '').slice(6);
    this.limits.name = 'limits';
    this.limits.placeholder = 'cpu=2, memory=4Gi';
    this.limits.value = tags
      .filter(t => t.startsWith('limit:'))
      .map(t => {
        const rest = t.slice(6);
        const at = rest.indexOf(':');
        return `${rest.slice(0, at)}=${rest.slice(at + 1)}`;
      })
      .join(', ');
    for (const [label, input] of [
      ['role', this.role],
      ['step name', this.step],
      ['after steps (prev:)', this.prev],
      ['image (image:)', this.image],
      ['limits (limit:)', this.limits]
    ] as [string, HTMLElement][]) {
      const l = document.createElement('label');
      l.textContent = label;
      l.appendChild(input);
      this.node.appendChild(l);
    }
  }

  values(): {
    role: string;
    step: string;
    prev: string;
    image: string;
    limits: string;
  } {
    return {
      role: this.role.value,
      step: this.step.value.trim(),
      prev: this.prev.value,
      image: this.image.value,
      limits: this.limits.value
    };
  }
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'nbship-lab:plugin',
  description: 'nbship: steps on the cells, problems as you type, graph, run and test',
  autoStart: true,
  requires: [INotebookTracker, IRenderMimeRegistry],
  optional: [ILabShell],
  activate: (
    app: JupyterFrontEnd,
    tracker: INotebookTracker,
    rendermime: IRenderMimeRegistry,
    shell: ILabShell | null
  ) => {
    const side = new NbshipPanel(rendermime);
    app.shell.add(side, 'right', { rank: 200 });
    const latest = new WeakMap<NotebookPanel, Analysis>();

    const analyse = async (panel: NotebookPanel): Promise<void> => {
      let analysis: Analysis;
      try {
        analysis = await api('analysis', {
          method: 'POST',
          body: JSON.stringify({
            path: panel.context.path,
            content: panel.context.model.toJSON()
          })
        });
      } catch (err) {
        console.warn('nbship: analysis failed', err);
        return;
      }
      latest.set(panel, analysis);
      if (!analysis.message) {
        new CellMarks(panel).show(analysis);
      }
      if (tracker.currentWidget === panel) {
        side.follow(panel, analysis);
      }
    };

    tracker.widgetAdded.connect((_, panel) => {
      let timer = 0;
      const soon = () => {
        window.clearTimeout(timer);
        timer = window.setTimeout(() => void analyse(panel), DEBOUNCE_MS);
      };
      void panel.context.ready.then(() => {
        void analyse(panel);
        panel.context.model.contentChanged.connect(soon);
        panel.context.saveState.connect((_, state) => {
          if (state === 'completed') {
            void analyse(panel);
          }
        });
      });
    });
    tracker.currentChanged.connect((_, panel) => {
      side.follow(panel, panel ? (latest.get(panel) ?? null) : null);
    });
    void shell;
  }
};

export default plugin;
