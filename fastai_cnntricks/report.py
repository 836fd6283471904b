"The demo's HTML report: one function per section, each returning an HTML string; figures embedded as PNG."
from __future__ import annotations
import base64, html, io, json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

__all__ = ['fig_html', 'section', 'training_section', 'metrics_section', 'confusion_section',
           'write_report']

_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th{background:#f4f4f4}img{max-width:100%}.note{color:#666;font-size:.9em}"""


def fig_html(fig, alt='figure', dpi=90, close=True) -> str:
    "A matplotlib Figure as an embedded PNG `<img>` (the figure is closed)."
    buf = io.BytesIO()
    fig.savefig(buf, format='png', dpi=dpi, bbox_inches='tight')
    if close: plt.close(fig)
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def section(title, body, note=None) -> str:
    "An HTML report section: a heading, an optional note, and the body."
    note = f'<p class="note">{html.escape(note)}</p>' if note else ''
    return f'<section><h2>{html.escape(title)}</h2>{note}{body}</section>'


def training_section(learn) -> str:
    "Training curves: loss per batch, validation loss and metrics per epoch."
    rec = learn.recorder
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.5))
    n_ep = max(len(rec.values), 1)
    losses = np.array([float(l) for l in rec.losses])
    a1.plot(np.linspace(0, n_ep, len(losses), endpoint=False) if len(losses) else [], losses, label='train (per batch)')
    names, vals = rec.metric_names[1:-1], np.array(rec.values, dtype=float)
    if 'valid_loss' in names and len(vals):
        a1.plot(np.arange(1, len(vals) + 1), vals[:, names.index('valid_loss')], 'o-', label='valid')
    a1.set(xlabel='epoch', ylabel='loss', title='loss'); a1.legend()
    for i, n in enumerate(names):
        if n not in ('train_loss', 'valid_loss') and len(vals): a2.plot(np.arange(1, len(vals) + 1), vals[:, i], 'o-', label=n)
    a2.set(xlabel='epoch', title='validation metrics'); a2.legend(); a2.grid(alpha=.3)
    return section('Training', fig_html(fig, 'training curves'))


def metrics_section(metrics: dict) -> str:
    "The final metrics as a table."
    rows = ''.join(f'<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>' for k, v in metrics.items())
    return section('Final metrics', f'<table>{rows}</table>')


def confusion_section(learn) -> str:
    "The validation confusion matrix."
    from fastai.interpret import ClassificationInterpretation
    interp = ClassificationInterpretation.from_learner(learn)
    interp.plot_confusion_matrix(figsize=(5, 5))
    fig = plt.gcf()  # fastai draws on a new current figure and returns nothing
    return section('Confusion matrix (validation)', fig_html(fig, 'confusion matrix'))


def write_report(out_dir, title, sections, metrics=None) -> Path:
    "Write `out_dir/index.html` from HTML sections (and `metrics.json` when given); returns the HTML path."
    out = Path(out_dir); out.mkdir(parents=True, exist_ok=True)
    page = (f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>{"".join(sections)}</body></html>')
    (out/'index.html').write_text(page, encoding='utf-8')
    if metrics is not None: (out/'metrics.json').write_text(json.dumps(metrics, indent=2), encoding='utf-8')
    return out/'index.html'
