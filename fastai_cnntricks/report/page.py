"The HTML page of a report: figures as embedded PNG, one `section()` per topic, and `write_report`."
from __future__ import annotations
import base64, html, io, json
from pathlib import Path

import matplotlib.pyplot as plt

from ..core import CnnTricksError, check_type, check_count, check_bool

__all__ = ['fig_html', 'section', 'write_report']

_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th{background:#f4f4f4}img{max-width:100%}.note{color:#666;font-size:.9em}"""


def fig_html(fig, alt='figure', dpi=90, close=True) -> str:
    "A matplotlib Figure as an embedded PNG `<img>` (closed unless `close=False`): the report's one PNG encoder."
    check_type('fig', fig, plt.Figure, 'a matplotlib Figure')
    check_count('dpi', dpi)
    check_bool('close', close)
    buf = io.BytesIO()
    fig.savefig(buf, format='png', dpi=dpi, bbox_inches='tight')
    if close: plt.close(fig)
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def section(title: str,  # the heading
            body: str,  # HTML inside the section
            note: str | None = None,  # a sentence under the heading (plain text, escaped)
            id: str | None = None) -> str:  # the section's `id`, for links and tests
    "An HTML report section: a heading, an optional note, and the body."
    check_type('title', title, str, 'a heading (str)')
    check_type('body', body, str, 'an HTML string')
    note = f'<p class="note">{html.escape(note)}</p>' if note else ''
    anchor = f' id="{html.escape(id)}"' if id else ''
    return f'<section{anchor}><h2>{html.escape(title)}</h2>{note}{body}</section>'


def write_report(out_dir, title, sections, metrics=None) -> Path:
    "Write `out_dir/index.html` from HTML sections (and `metrics.json` when given); returns the HTML path."
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise CnnTricksError(f"out_dir={str(out_dir)!r} is not valid; it is an existing file, pass a folder")
    out.mkdir(parents=True, exist_ok=True)
    page = (f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>{"".join(sections)}</body></html>')
    (out/'index.html').write_text(page, encoding='utf-8')
    if metrics is not None: (out/'metrics.json').write_text(json.dumps(metrics, indent=2), encoding='utf-8')
    return out/'index.html'
