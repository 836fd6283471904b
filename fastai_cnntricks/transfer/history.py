"`GroupHistory`: records each parameter group's learning rate and trainable state at every training batch."
from __future__ import annotations

import numpy as np
from fastai.callback.core import Callback

__all__ = ['GroupHistory']


class GroupHistory(Callback):
    "Record, per training batch, every parameter group's LR and whether it trains (for schedule plots and reports)."
    order, run_valid = 70, False  # after ParamScheduler (60) has set this batch's LRs

    def before_fit(self): self.lrs, self.trainable, self.epochs = [], [], []

    def before_batch(self):
        if not self.training: return
        self.lrs.append([h['lr'] for h in self.opt.hypers])
        self.trainable.append([any(p.requires_grad for p in g) for g in self.opt.param_lists])
        self.epochs.append(self.epoch + self.iter / max(self.n_iter, 1))  # fractional epoch, for plots

    @property
    def lr_array(self): return np.array(self.lrs)
    @property
    def trainable_array(self): return np.array(self.trainable)
