"The report's transfer sections: the parameter groups, and the schedule (which groups trained when, at which LR)."
from __future__ import annotations
import html

from fastai.learner import Learner

from ..core import CnnTricksError, check_type
from .. import transfer  # noqa: F401  (the wing patches Learner.group_summary and Learner.plot_schedule)
from .page import fig_html, section

__all__ = ['groups_section', 'schedule_section']


def _schedule_arrays(learn):
    "(positions, per-group LRs, per-group trainable shares) of the last fit's schedule, or a clear error."
    log = getattr(learn, 'schedule_log', None)
    if log is None or not len(log):
        raise CnnTricksError("no schedule recorded on this Learner: train it with fine_tune_gradual or a schedule "
                             "callback first")
    return log.as_arrays()


def groups_section(learn: Learner, title: str = 'Parameter groups') -> str:
    """Each parameter group's name, size and trainable state (`Learner.group_summary`), with the peak LR each group
    reached during the last fit where a schedule was recorded, and the LR the optimizer holds now."""
    check_type('learn', learn, Learner, 'a fastai Learner')
    df = learn.group_summary(show=False).rename(columns={'lr': 'current LR (end of training)'})
    log = getattr(learn, 'schedule_log', None)
    if log is not None and len(log) and len(log.names) == len(df):
        df.insert(df.columns.get_loc('current LR (end of training)'), 'peak LR (during training)',
                  log.as_arrays()[1].max(0))
    body = df.to_html(float_format=lambda v: f'{v:.2e}')
    return section(title, body)


def schedule_section(learn: Learner, title: str = 'Schedule') -> str:
    """The `plot_schedule` figure and a table of each group's trainable share and LR at the start, middle and end of
    training. Needs a fit with a schedule (e.g. `fine_tune_gradual`)."""
    check_type('learn', learn, Learner, 'a fastai Learner')
    pos, lrs, tr = _schedule_arrays(learn)
    idx = [0, len(pos) // 2, len(pos) - 1]
    head = ''.join(f'<th>epoch {pos[i]:.2f}: trainable / LR</th>' for i in idx)
    rows = ''.join(f'<tr><td>{g}</td><td>{html.escape(name)}</td>' +
                   ''.join(f'<td>{tr[i, g]:.0%} / {lrs[i, g]:.2e}</td>' for i in idx) + '</tr>'
                   for g, name in enumerate(learn.schedule_log.names))
    body = ('<p>Which parameter groups trained when (head on top) and the learning rate each group actually got '
            '(after warm-up of newly thawed groups and discriminative factors).</p>'
            f'{fig_html(learn.plot_schedule(), "schedule")}'
            f'<table><tr><th>group</th><th>name</th>{head}</tr>{rows}</table>')
    return section(title, body, id='schedule')
