"""Discriminative learning rates: per-group LRs that decay from the head down, as values or as a callback over any
schedule; the LR rule for a pretrained body (`auto_base_lr`) and the one warning for an LR far above it."""
from __future__ import annotations
import warnings

import numpy as np
from fastai.callback.core import Callback
from fastai.learner import Learner

from ..core import CnnTricksError, check_bool, check_number, check_positive

__all__ = ['layer_decay_lrs', 'LRScaler', 'DiscriminativeLR', 'ScheduleRecorder', 'ScheduleLog', 'auto_base_lr',
           'AUTO_LR_ANCHORS', 'LR_WARN_FACTOR', 'warn_if_lr_high', 'peak_lr']

LR_WARN_FACTOR = 10  # a peak LR this many times auto_base_lr (e.g. lr_find's valley) ends near chance on few-shot data


# (images per class, base LR) where fine_tune_gradual's head LR was best or level with the best in seed-paired sweeps on
# digits and Fashion-MNIST (bench/RESULTS.md, "auto_base_lr"): few images want an LR that barely moves the body off the
# features its probe head separates; 100 per class wants fastai's own range, a factor 3 below where runs diverged; with
# ten times the steps (1,000 per class) an LR 3x that one diverged, so the rule falls back to the LR measured good there.
AUTO_LR_ANCHORS = ((10, 1.9e-5), (30, 9.9e-5), (100, 2e-3), (1000, 6e-4))


def _check_anchors(anchors):
    pairs = list(anchors) if isinstance(anchors, (list, tuple)) else None
    if not pairs or not all(isinstance(a, (list, tuple)) and len(a) == 2 for a in pairs):
        raise CnnTricksError(f"anchors must be a non-empty sequence of (images per class, lr) pairs; got {anchors!r}")
    for i, (n, lr) in enumerate(pairs):
        check_positive(f'anchors[{i}] images per class', n); check_positive(f'anchors[{i}] lr', lr)
    if any(b[0] <= a[0] for a, b in zip(pairs, pairs[1:])):
        raise CnnTricksError(f"anchors must rise in images per class; got {[a[0] for a in pairs]}")
    return np.log([[float(n), float(lr)] for n, lr in pairs])


def auto_base_lr(dls, anchors=AUTO_LR_ANCHORS) -> float:
    """The head's base LR for `dls`' images per class: log-log interpolation between `anchors` ((images per class,
    LR) pairs, rising in images per class), the last anchor's LR above it and the first segment's slope below the
    first. The default anchors were measured on tf_efficientnet_lite0/1/2 (bench/RESULTS.md): the LR rises with the
    data, slowly up to 30 per class and steeply to 100, then falls as the steps grow."""
    logs = _check_anchors(anchors)
    n, c = len(dls.train_ds), getattr(dls, 'c', None)
    top = float(anchors[-1][1])
    if not c or not n: return top
    x = np.log(n / c)
    if x >= logs[-1, 0]: return top
    if len(logs) > 1 and x < logs[0, 0]:  # extrapolate down along the first segment
        slope = (logs[1, 1] - logs[0, 1]) / (logs[1, 0] - logs[0, 0])
        return float(np.exp(logs[0, 1] + slope * (x - logs[0, 0])))
    return float(np.exp(np.interp(x, logs[:, 0], logs[:, 1])))


def warn_if_lr_high(lr: float, dls, name: str = 'base_lr', stacklevel: int = 3) -> bool:
    "Warn (and return True) when the head's peak `lr` is over `LR_WARN_FACTOR` times `auto_base_lr(dls)`."
    auto_lr = auto_base_lr(dls)
    if not lr > LR_WARN_FACTOR * auto_lr: return False
    warnings.warn(f"{name}={lr:.2g} is {lr / auto_lr:.0f}x auto_base_lr(dls)={auto_lr:.2g}: on a pretrained body such "
                  "LRs (e.g. lr_find's suggestions, made for a fresh head with everything training) move the features "
                  "away from what the probe head separates; use auto_base_lr(dls) (fine_tune_gradual's default)",
                  stacklevel=stacklevel)
    return True


def peak_lr(learn: Learner) -> float:
    "The head's (last group's) highest LR in the fit about to run: the maximum of a ParamScheduler's `lr` schedule, else the optimizer's."
    for cb in learn.cbs:
        f = getattr(cb, 'scheds', {}).get('lr') if type(cb).__name__ == 'ParamScheduler' else None
        if f is not None: return float(max(np.atleast_1d(f(p)).ravel()[-1] for p in np.linspace(0, 1, 201)))
    return float(learn.opt.hypers[-1]['lr'])


def _check_decay(decay):
    "A factor in (0, 1] (ULMFiT uses 1/2.6 ~ 0.38, ConvNeXt/BEiT 0.7-0.8; 1 means no decay)."
    check_number('decay', decay, lo=0, hi=1, lo_open=True)
    return decay


def _n_groups(learn):
    return len(learn.opt.param_lists) if learn.opt is not None else len(learn.splitter(learn.model))


def layer_decay_lrs(learn: Learner, lr: float, decay: float) -> np.ndarray:
    "Per-group LRs `lr * decay**(n_groups-1-i)`: the head gets `lr`, each group below `decay` times the one above; pass as `lr_max`."
    check_positive('lr', lr); _check_decay(decay)
    n = _n_groups(learn)
    return lr * decay ** np.arange(n - 1, -1, -1, dtype=float)


class ScheduleLog:
    "What trained when: per optimizer step, the position in epochs, each group's effective LR and trainable fraction."
    def __init__(self, names): self.names, self.pos, self.lrs, self.trainable = list(names), [], [], []
    def __len__(self): return len(self.pos)
    def as_arrays(self): return np.array(self.pos), np.array(self.lrs), np.array(self.trainable)


class LRScaler(Callback):
    """Base for callbacks that multiply each group's LR by `group_factors()` for the optimizer step only, on top of
    whatever ParamScheduler set (the factors of every LRScaler multiply; the first one applies and restores them, so
    nothing compounds from batch to batch). It also writes `learn.schedule_log` for `plot_schedule`."""
    order = 65

    def group_factors(self):
        "Per-group LR factors now (None for all ones)."
        return None

    def _is_first(self): return next(cb for cb in self.learn.cbs.sorted('order') if isinstance(cb, LRScaler)) is self

    def before_fit(self): self._fit_started = self._lr_checked = False  # validate() calls before_fit too: act at before_train

    def before_train(self):
        if not getattr(self, '_lr_checked', False):
            self._lr_checked = True  # the LR warning, once per fit: from the first LRScaler (by order) that asks for it
            if getattr(self, 'warn_lr', False) and self is next(cb for cb in self.learn.cbs.sorted('order')
                                                                if isinstance(cb, LRScaler) and getattr(cb, 'warn_lr', False)):
                warn_if_lr_high(peak_lr(self.learn), self.dls, name='lr', stacklevel=2)
        if getattr(self, '_fit_started', False) or not self._is_first(): return
        from .groups import group_names
        self._fit_started = True
        self.learn.schedule_log = ScheduleLog(group_names(self.learn))

    def before_step(self):
        if not self._is_first(): return
        hypers = self.opt.hypers
        f = np.ones(len(hypers))
        for cb in self.learn.cbs:
            if isinstance(cb, LRScaler):
                g = cb.group_factors()
                if g is not None: f = f * np.asarray(g, dtype=float)
        self._orig = self.opt.unscaled_lrs = [h['lr'] for h in hypers]  # on the optimizer too: a Ctrl-C skips after_step
        for h, lr, k in zip(hypers, self._orig, f): h['lr'] = lr * k
        log = getattr(self.learn, 'schedule_log', None)
        if log is not None:
            log.pos.append(self.epoch + self.iter / max(self.n_iter, 1))
            log.lrs.append([h['lr'] for h in hypers])
            log.trainable.append([float(np.mean([p.requires_grad for p in g])) if len(g) else 0.
                                  for g in self.opt.param_lists])

    def _restore(self):
        orig = getattr(self, '_orig', None)
        if orig is None: return
        for h, lr in zip(self.opt.hypers, orig): h['lr'] = lr
        self._orig = self.opt.unscaled_lrs = None

    def after_step(self): self._restore()
    def after_fit(self): self._restore()


class ScheduleRecorder(LRScaler):
    "Records `learn.schedule_log` (per-group LRs and trainable groups) in any fit, without changing anything."


class DiscriminativeLR(LRScaler):
    """Multiply group i's LR by `decay**(n_groups-1-i)` on top of whatever schedule runs (`fit_one_cycle`, `fit_flat_cos`,
    ...). At `before_fit` it warns when the head's peak LR is far above `auto_base_lr` (`warn_if_lr_high`)."""
    def __init__(self,
                 decay: float = 0.7,  # factor between a group and the one above it; the head keeps the LR
                 warn_lr: bool = True):  # warn when the peak LR is over LR_WARN_FACTOR x auto_base_lr(dls)
        self.decay, self.warn_lr = _check_decay(decay), check_bool('warn_lr', warn_lr)

    def before_fit(self):
        super().before_fit()
        others = [cb for cb in self.learn.cbs if isinstance(cb, DiscriminativeLR) and cb is not self]
        if others: raise CnnTricksError("two DiscriminativeLR callbacks would multiply their decays; keep one")

    def group_factors(self):
        n = len(self.opt.hypers)
        return self.decay ** np.arange(n - 1, -1, -1, dtype=float)
