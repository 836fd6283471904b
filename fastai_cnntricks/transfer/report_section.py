"The demo report's 'schedule' section: the timeline of trainable groups and per-group LRs, as HTML."
from __future__ import annotations
import html

from fastai.learner import Learner

from ..core import CnnTricksError
from ..report import fig_html, section

__all__ = ['groups_section_html', 'schedule_section_html']


def groups_section_html(learn: Learner, title: str = 'Parameter groups') -> str:
    "HTML for the report: each parameter group's name, size, trainable state and LR (`Learner.group_summary`)."
    body = learn.group_summary(show=False).to_html(float_format=lambda v: f'{v:.2e}')
    return section(title, body)


def schedule_section_html(learn: Learner, title: str = 'Schedule') -> str:
    """HTML for the report: the `plot_schedule` figure (inline PNG) and a table of each group's trainable share and
    LR at the start, middle and end of training. Needs a fit with a schedule (e.g. `fine_tune_gradual`)."""
    from . import plot_schedule  # noqa: F401  (patches Learner.plot_schedule)
    log = getattr(learn, 'schedule_log', None)
    if log is None or not len(log):
        raise CnnTricksError("no schedule recorded on this Learner: train it with fine_tune_gradual or a schedule callback first")
    pos, lrs, tr = log.as_arrays()
    idx = [0, len(pos) // 2, len(pos) - 1]
    head = ''.join(f'<th>epoch {pos[i]:.2f}: trainable / LR</th>' for i in idx)
    rows = ''.join(f'<tr><td>{g}</td><td>{html.escape(name)}</td>' +
                   ''.join(f'<td>{tr[i, g]:.0%} / {lrs[i, g]:.2e}</td>' for i in idx) + '</tr>'
                   for g, name in enumerate(log.names))
    return (f'<section id="schedule"><h2>{html.escape(title)}</h2>'
            '<p>Which parameter groups trained when (head on top) and the learning rate each group actually got '
            '(after warm-up of newly thawed groups and discriminative factors).</p>'
            f'{fig_html(learn.plot_schedule(), "schedule")}'
            f'<table><tr><th>group</th><th>name</th>{head}</tr>{rows}</table></section>')
