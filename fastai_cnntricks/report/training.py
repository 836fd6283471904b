"The report's training sections: curves, the final metrics, the validation confusion matrix."
from __future__ import annotations
import html

import matplotlib.pyplot as plt
import numpy as np
from fastai.learner import Learner

from ..core import check_type
from .page import fig_html, section

__all__ = ['training_section', 'metrics_section', 'confusion_section']


def training_section(learn: Learner) -> str:
    "Training curves: loss per batch, validation loss and metrics per epoch."
    check_type('learn', learn, Learner, 'a fastai Learner')
    rec = learn.recorder
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.5))
    n_ep = max(len(rec.values), 1)
    losses = np.array([float(l) for l in rec.losses])
    steps = np.linspace(0, n_ep, len(losses), endpoint=False) if len(losses) else []
    a1.plot(steps, losses, label='train (per batch)')
    names, vals = rec.metric_names[1:-1], np.array(rec.values, dtype=float)
    epochs = np.arange(1, len(vals) + 1)
    if 'valid_loss' in names and len(vals):
        a1.plot(epochs, vals[:, names.index('valid_loss')], 'o-', label='valid')
    a1.set(xlabel='epoch', ylabel='loss', title='loss')
    a1.legend()
    for i, n in enumerate(names):
        if n not in ('train_loss', 'valid_loss') and len(vals): a2.plot(epochs, vals[:, i], 'o-', label=n)
    a2.set(xlabel='epoch', title='validation metrics')
    a2.legend()
    a2.grid(alpha=.3)
    return section('Training', fig_html(fig, 'training curves'))


def metrics_section(metrics: dict) -> str:
    "The final metrics as a table."
    check_type('metrics', metrics, dict, 'a dict name -> value')
    rows = ''.join(f'<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>' for k, v in metrics.items())
    return section('Final metrics', f'<table>{rows}</table>')


def confusion_section(learn: Learner) -> str:
    "The validation confusion matrix."
    from fastai.interpret import ClassificationInterpretation
    check_type('learn', learn, Learner, 'a fastai Learner')
    interp = ClassificationInterpretation.from_learner(learn)
    interp.plot_confusion_matrix(figsize=(5, 5))
    fig = plt.gcf()  # fastai draws on a new current figure and returns nothing
    return section('Confusion matrix (validation)', fig_html(fig, 'confusion matrix'))
