"""One self-contained HTML page of a run: its pictures, final metrics and config.

  python -m alignjax.report runs/demo              # -> runs/demo/report.html
  python -m alignjax.report runs/demo --out /tmp/demo.html

Reads the workdir as the trainer left it (`alignjax.workdir`): `pictures/curves.png`, the
newest `pictures/step_<N>/` (zero-shot predictions and confusion matrices, retrieval
similarity matrices), `summary.json` (else the last evaluation in `metrics.jsonl`) and
`config.json`. Every picture is embedded as a base64 `data:` URI, so the page opens
anywhere, offline, as one file. A workdir trained with `config.log.pictures=False` (or
before pictures existed) still gets its metrics and config; the page says that no pictures
were drawn and how to get them.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import os
import re
from typing import Any

from alignjax import workdir as workdir_lib

__all__ = ['build_report', 'main', 'newest_pictures']

_STEP_DIR = re.compile(r'^step_(\d+)$')
_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222 }
h1 { font-size: 1.4em } h2 { font-size: 1.15em; margin-top: 1.6em }
figure { display: inline-block; margin: 0.6em; vertical-align: top }
figcaption { font-size: 0.8em; color: #555; text-align: center }
img { max-width: 100%; border: 1px solid #ddd }
table { border-collapse: collapse; font-size: 0.85em }
td, th { border: 1px solid #ddd; padding: 2px 8px; text-align: left }
td.num { text-align: right; font-variant-numeric: tabular-nums }
pre { background: #f6f6f6; padding: 1em; font-size: 0.75em; overflow: auto; max-height: 30em }
"""
# Counts the images that loaded (naturalWidth > 0) into <body data-images="ok/total">, so a
# headless browser's dumped DOM says whether every picture decoded.
_CHECK = """
window.addEventListener('load', () => {
  const imgs = Array.from(document.images);
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.setAttribute('data-images', ok + '/' + imgs.length);
});
"""


def newest_pictures(workdir: str) -> tuple[int | None, list[str]]:
    """(step, PNG paths) of the newest `pictures/step_<N>/` of `workdir` ((None, []) if none)."""
    root = os.path.join(workdir, workdir_lib.PICTURES_DIR)
    steps = []
    if os.path.isdir(root):
        steps = [int(m.group(1)) for d in os.listdir(root) if (m := _STEP_DIR.match(d))]
    if not steps:
        return None, []
    step = max(steps)
    folder = os.path.join(root, f'step_{step}')
    return step, sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith('.png'))


def _figure(path: str, caption: str) -> str:
    with open(path, 'rb') as f:
        data = base64.b64encode(f.read()).decode('ascii')
    return (
        f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
        f'<figcaption>{html.escape(caption)}</figcaption></figure>'
    )


def _metrics(workdir: str) -> tuple[int | None, dict[str, Any]]:
    """The final metrics: summary.json, else the last record with evaluation metrics."""
    path = os.path.join(workdir, 'summary.json')
    if os.path.exists(path):
        with open(path) as f:
            summary = json.load(f)
        return summary.get('step'), {k: v for k, v in summary.items() if k != 'step'}
    records = workdir_lib.read_metrics(workdir) if os.path.exists(
        os.path.join(workdir, 'metrics.jsonl')) else []  # fmt: skip
    for r in reversed(records):
        evals = {k: v for k, v in r.items() if k.split('/')[0] in _EVAL_KINDS}
        if evals:
            return r['step'], evals
    return None, {}


_EVAL_KINDS = ('zeroshot', 'retrieval', 'geometry', 'linear_probe', 'fewshot', 'cross_modal')


def _metrics_table(metrics: dict[str, Any]) -> str:
    rows = []
    for k in sorted(metrics):
        v = metrics[k]
        shown = f'{v:.4f}' if isinstance(v, float) else html.escape(str(v))
        rows.append(f'<tr><td>{html.escape(k)}</td><td class="num">{shown}</td></tr>')
    return '<table><tr><th>metric</th><th>value</th></tr>' + ''.join(rows) + '</table>'


def build_report(workdir: str, out: str | None = None) -> str:
    """Writes the report of `workdir` (default `<workdir>/report.html`); returns its path."""
    if not os.path.isdir(workdir):
        raise FileNotFoundError(f'{workdir} is not a directory: give a training workdir.')
    config_path = os.path.join(workdir, 'config.json')
    if not os.path.exists(config_path):
        raise FileNotFoundError(
            f'{workdir} has no config.json: it is not a training workdir (or nothing was '
            'trained in it yet).'
        )
    with open(config_path) as f:
        config = json.load(f)
    step, metrics = _metrics(workdir)
    pic_step, pictures = newest_pictures(workdir)
    curves = os.path.join(workdir, workdir_lib.PICTURES_DIR, workdir_lib.CURVES_FILE)
    name = os.path.basename(os.path.normpath(workdir))
    loss = (config.get('loss') or {}).get('name', '?')
    parts = [
        f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(name)}</title>',
        f'<style>{_STYLE}</style><script>{_CHECK}</script></head><body>',
        f'<h1>{html.escape(name)}</h1>',
        f'<p>loss <b>{html.escape(str(loss))}</b>, {config.get("total_steps", "?")} steps at '
        f'batch {config.get("batch_size", "?")}; data <code>'
        f'{html.escape(str((config.get("data") or {}).get("train", "?")))}</code>. '
        f'Workdir: <code>{html.escape(os.path.abspath(workdir))}</code>.</p>',
    ]
    if os.path.exists(curves):
        parts += ['<h2>Curves</h2>', _figure(curves, 'loss, learning rate and evaluation')]
    if pictures:
        parts.append(f'<h2>What the model sees (step {pic_step})</h2>')
        parts += [_figure(p, os.path.basename(p)[: -len('.png')]) for p in pictures]
    else:
        parts.append(
            '<p>No pictures were drawn for this run: train with <code>config.log.pictures=True'
            '</code> (the default) and evaluators, or re-evaluate it.</p>'
        )
    title = f'Metrics (step {step})' if step is not None else 'Metrics'
    parts += [f'<h2>{title}</h2>', _metrics_table(metrics) if metrics else '<p>None yet.</p>']
    parts += ['<h2>Config</h2>', f'<pre>{html.escape(json.dumps(config, indent=1))}</pre>']
    parts.append('</body></html>')
    out = out or os.path.join(workdir, workdir_lib.REPORT_FILE)
    with open(out, 'w') as f:
        f.write('\n'.join(parts))
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        prog='python -m alignjax.report', description=__doc__.split('\n')[0]
    )
    p.add_argument('workdir', help='a training workdir')
    p.add_argument('--out', default=None, help='the HTML file (default: WORKDIR/report.html)')
    a = p.parse_args(argv)
    try:
        path = build_report(a.workdir, a.out)
    except FileNotFoundError as e:
        raise SystemExit(f'alignjax.report: {e}') from None
    print(f'Wrote {path}')


if __name__ == '__main__':
    main()
