"`Learner.fine_tune_gradual`: a one-call transfer recipe like `fine_tune`, with defaults chosen on few-shot benchmarks."
from __future__ import annotations
import inspect, warnings

from fastcore.basics import patch
from fastcore.foundation import L
from fastcore.meta import delegates
from fastai.learner import Learner
from fastai.callback.core import Callback
from fastai.callback.schedule import fit_one_cycle  # noqa: F401  (patches Learner.fit_one_cycle)

from ..core import CnnTricksError, check_bool, check_choice, check_count, check_number, check_positive, check_type
from .forgetting import L2SP
from .lrs import DiscriminativeLR, _check_decay, auto_base_lr, LR_WARN_FACTOR, warn_if_lr_high  # noqa: F401 (re-exported)
from .norms import NormPolicy
from .schedules import GradualUnfreeze, LPFT
from .head_init import probe_init_head  # noqa: F401  (patches Learner.probe_init_head)

__all__ = ['gradual_schedule', 'auto_base_lr', 'fine_tune_gradual', 'LR_WARN_FACTOR', 'AugmentFrom']

def gradual_schedule(n_groups: int, head_pct: float = 0.25, full_pct: float = 0.75) -> dict:
    "`{fraction of training: n trainable groups}`: the head alone until `head_pct`, then one group more at even steps until all train at `full_pct`."
    check_count('n_groups', n_groups)
    check_number('head_pct', head_pct, lo=0, hi=1); check_number('full_pct', full_pct, lo=0, hi=1)
    if not head_pct < full_pct:
        raise CnnTricksError(f"head_pct={head_pct!r}, full_pct={full_pct!r} are not valid; need 0 <= head_pct < full_pct <= 1")
    steps = n_groups - 1
    return {0.: 1, **{head_pct + (full_pct - head_pct) * k / steps: 1 + k for k in range(1, steps + 1)}}


def _set_split_idx(ds, i):
    "Set the split a fastai `Datasets` (each of its `TfmdLists`) or `TfmdLists` presents as (what `Datasets.set_split_idx` does)."
    for tl in getattr(ds, 'tls', [ds]): tl.tfms.split_idx = i


class AugmentFrom(Callback):
    "The training DataLoader's random transforms held off (the items as on validation) until `pct` of training, then on."
    order = -5  # before the schedules
    def __init__(self, pct: float = 0.):  # fraction of training (by epoch) before which batches come unaugmented
        check_number('pct', pct, lo=0, hi=1)
        self.pct, self._ds, self._split = pct, None, None

    def before_fit(self):
        dl = self.dls.train
        # fastai's TfmdDL hands its pipelines the dataset's split_idx at each iteration (`before_iter`)
        ds = getattr(getattr(dl, 'dl', dl), 'dataset', None)  # a DistributedDL wraps the TfmdDL
        ok = all(hasattr(getattr(tl, 'tfms', None), 'split_idx') for tl in getattr(ds, 'tls', [ds]))
        self._ds, self._split = (ds, ds.split_idx) if ds is not None and ok else (None, None)

    def before_epoch(self):
        if self._ds is None: return
        on = self.epoch >= self.pct * self.n_epoch - 1e-9
        _set_split_idx(self._ds, self._split if on else 1)  # RandTransforms run only on split 0 (training)

    def after_fit(self):
        "Augmentation as found (also called by `fine_tune_gradual` when the fit raises)."
        if self._ds is not None: _set_split_idx(self._ds, self._split)


@patch
@delegates(Learner.fit_one_cycle, but=['lr_max', 'cbs'])
def fine_tune_gradual(self: Learner,
                      epochs: int,  # total epochs, head-only phase included
                      base_lr: float | None = None,  # the head's peak LR (None: `auto_base_lr`); each group below gets `decay` times the one above
                      decay: float = 0.7,  # discriminative LR factor between groups (1: none)
                      head_pct: float = 0.25,  # fraction of training with only the head trainable (linear probe)
                      full_pct: float = 0.75,  # fraction of training by which every group is trainable
                      norm: NormPolicy | None = None,  # default: every BatchNorm keeps its ImageNet statistics (eval mode)
                      warmup: float = 0.5,  # epochs of LR warm-up for each newly thawed group
                      l2sp: float | None = None,  # alpha of an L2-SP penalty towards the pretrained weights (None: off)
                      schedule: str = 'gradual',  # 'gradual' (head down) or 'lpft' (probe, then everything)
                      init_head: bool = True,  # start the head from a converged linear probe (`probe_init_head`)
                      probe_copies: int = 0,  # the probe also fits on this many augmented copies of the training set
                      aug_from: float = 0.,  # fraction of training before which the DataLoader's augmentation is held off
                      cbs=None, **kwargs):
    """Fine-tune a pretrained model in one call: the head starts from a converged linear probe on the frozen features,
    trains alone for `head_pct`, then groups thaw from the head down with discriminative LRs and a warm-up for each,
    under one `fit_one_cycle`; Adam state is kept from phase to phase and every BatchNorm keeps its pretraining
    statistics. Why (measured in bench/transfer.py): on few-shot data fastai's `fine_tune` loses to a linear probe
    because (1) ~15 SGD steps cannot fit a fresh head, (2) BatchNorm in train mode on tiny batches of out-of-domain
    images shifts every layer's statistics, (3) Adam at 1e-3-scale LRs moves every body weight by ~lr per step.

    `lr_find()` does not fit this recipe: it sweeps a fresh head with every group trainable, and its suggestion for a
    pretrained body is far above what keeps the probe's accuracy (bench/RESULTS.md); a `base_lr` over
    `LR_WARN_FACTOR` times `auto_base_lr` warns. Resuming with `start_epoch=k` keeps the loaded head (no new probe).
    Stopped early (an exception or Ctrl-C), the learner may be left with frozen groups: `learn.unfreeze_all()`.

    With augmentation in `batch_tfms`, the clean probe and the very low body LRs leave it little to act on
    (bench/results/label_payoff.md): `probe_copies` fits the probe on features of augmented copies too (forward
    passes only, no extra epochs), and `aug_from` keeps the augmentation off for the first part of training."""
    _check_recipe_args(epochs=epochs, base_lr=base_lr, decay=decay, head_pct=head_pct, full_pct=full_pct, norm=norm,
                       warmup=warmup, l2sp=l2sp, schedule=schedule, init_head=init_head, probe_copies=probe_copies,
                       aug_from=aug_from, kwargs=kwargs)
    if norm is None: norm = NormPolicy(affine=True, stats='frozen', scope='all')
    if self.opt is None: self.create_opt()
    n = len(self.opt.param_lists)
    gradual_schedule(n, head_pct, full_pct)  # a schedule that cannot run fails before the probe overwrites the head
    resuming = bool(kwargs.get('start_epoch'))
    if base_lr is None: base_lr = auto_base_lr(self.dls)
    else: warn_if_lr_high(base_lr, self.dls)
    if init_head and not resuming: self.probe_init_head(aug_copies=probe_copies)  # a resumed fit keeps the head it loaded
    if schedule == 'gradual':
        sched = GradualUnfreeze(schedule=gradual_schedule(n, head_pct, full_pct), unit='fraction', warmup=warmup, norm=norm,
                                init_head=False, warn_lr=False)  # the probe and the warning happened above
    else:
        sched = LPFT(lp_pct=head_pct, warmup=warmup, ft_norm=norm, init_head=False, warn_lr=False)
    aug = [AugmentFrom(aug_from)] if aug_from else []
    extra = [sched, DiscriminativeLR(decay, warn_lr=False)] + ([L2SP(alpha=l2sp, beta=0.)] if l2sp else []) + aug
    if l2sp and 'wd' not in kwargs: kwargs['wd'] = 0.
    try: self.fit_one_cycle(epochs, base_lr, cbs=extra + list(L(cbs)), **kwargs)
    finally:
        for cb in aug: cb.after_fit()


def _check_recipe_args(epochs, base_lr, decay, head_pct, full_pct, norm, warmup, l2sp, schedule, init_head, kwargs,
                       probe_copies=0, aug_from=0.):
    "Every argument of `fine_tune_gradual`, before anything touches the model (the probe overwrites the head)."
    check_count('epochs', epochs)
    if base_lr is not None: check_positive('base_lr', base_lr)
    _check_decay(decay)
    check_number('head_pct', head_pct, lo=0, hi=1); check_number('full_pct', full_pct, lo=0, hi=1)
    if not head_pct < full_pct:
        raise CnnTricksError(f"head_pct={head_pct!r}, full_pct={full_pct!r} are not valid; need head_pct < full_pct")
    if norm is not None: check_type('norm', norm, NormPolicy, 'a NormPolicy(affine=..., stats=...) or None')
    check_positive('warmup', warmup, allow_zero=True)
    if l2sp is not None: check_positive('l2sp', l2sp)
    check_choice('schedule', schedule, ('gradual', 'lpft'))
    check_bool('init_head', init_head)
    check_count('probe_copies', probe_copies, allow_zero=True)
    if probe_copies and not init_head:
        raise CnnTricksError(f"probe_copies={probe_copies!r} needs init_head=True (the copies are what the probe fits on)")
    check_number('aug_from', aug_from, lo=0, hi=1)
    fit_args = inspect.signature(Learner.fit_one_cycle).parameters
    unknown = [k for k in kwargs if k not in fit_args or k in ('self', 'n_epoch', 'lr_max', 'cbs')]
    if unknown: raise TypeError(f"fine_tune_gradual() got unexpected keyword argument(s) {', '.join(map(repr, unknown))}; "
                                "the extra ones go to fit_one_cycle")
    if 'start_epoch' in kwargs: check_count('start_epoch', kwargs['start_epoch'], allow_zero=True)
