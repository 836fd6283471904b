"`Learner.plot_schedule()`: which groups were trainable over training, and each group's effective LR."
from __future__ import annotations

import numpy as np
from fastcore.basics import patch
from fastai.learner import Learner

from ..core import CnnTricksError

__all__ = ['plot_schedule']


def _log(learn):
    log = getattr(learn, 'schedule_log', None)
    if log is None or not len(log):
        raise CnnTricksError("no schedule recorded: fit with a freezing schedule (GradualUnfreeze, ChainThaw, LPFT), "
                             "DiscriminativeLR or ScheduleRecorder() in cbs, or use fine_tune_gradual, then plot")
    return log


@patch
def plot_schedule(self: Learner, figsize=(9, 5.5), log_lr: bool = True, max_name: int = 24):
    """One figure, two panels sharing the epoch axis: a timeline of trainable groups (dark = trainable; grey = only
    the norm layers train) over a lower panel of each group's effective LR (after warm-up and discriminative factors)."""
    import matplotlib.pyplot as plt
    log = _log(self)
    pos, lrs, tr = log.as_arrays()
    n = lrs.shape[1]
    fig, (ax0, ax1) = plt.subplots(2, 1, figsize=figsize, sharex=True, gridspec_kw=dict(height_ratios=[1, 1.3]))
    # timeline: rows = groups (head on top), cells shaded by the fraction of the group's parameters that train
    end = pos[-1] + (pos[1] - pos[0] if len(pos) > 1 else 1)
    edges = np.append(pos, end)
    ax0.pcolormesh(edges, np.arange(n + 1), tr.T, cmap='Greens', vmin=0, vmax=1, shading='flat')
    names = [(s if len(s) <= max_name else s[:max_name - 1] + '…') for s in log.names]
    ax0.set_yticks(np.arange(n) + .5, [f'{i}: {s}' for i, s in enumerate(names)], fontsize=8)
    ax0.set_title('trainable groups (dark: trainable, light: only norm layers train)')
    cmap = plt.get_cmap('viridis')
    for i in range(n):
        ax1.plot(pos, lrs[:, i], color=cmap(i / max(n - 1, 1)), label=f'{i}', lw=1.2)
    if log_lr and (lrs > 0).all(): ax1.set_yscale('log')
    ax1.set_ylabel('learning rate'); ax1.set_xlabel('epoch')
    ax1.legend(title='group', fontsize=7, ncol=min(n, 5), loc='best')
    ax1.set_title("each group's effective LR")
    fig.tight_layout()
    plt.close(fig)  # returned, not shown twice in notebooks
    return fig
