"`Learner.fine_tune_gradual`: a one-call transfer recipe like `fine_tune`, with defaults chosen on few-shot benchmarks."
from __future__ import annotations
import inspect, warnings

from fastcore.basics import patch
from fastcore.foundation import L
from fastcore.meta import delegates
from fastai.learner import Learner
from fastai.callback.schedule import fit_one_cycle  # noqa: F401  (patches Learner.fit_one_cycle)

from ..core import CnnTricksError, check_bool, check_choice, check_count, check_number, check_positive, check_type
from .forgetting import L2SP
from .lrs import DiscriminativeLR, _check_decay
from .norms import NormPolicy
from .schedules import GradualUnfreeze, LPFT
from .head_init import probe_init_head  # noqa: F401  (patches Learner.probe_init_head)

__all__ = ['gradual_schedule', 'auto_base_lr', 'fine_tune_gradual', 'LR_WARN_FACTOR']

LR_WARN_FACTOR = 10  # a base_lr this many times auto_base_lr (e.g. lr_find's valley) ends near chance on few-shot data


def gradual_schedule(n_groups: int, head_pct: float = 0.25, full_pct: float = 0.75) -> dict:
    "`{fraction of training: n trainable groups}`: the head alone until `head_pct`, then one group more at even steps until all train at `full_pct`."
    check_count('n_groups', n_groups)
    check_number('head_pct', head_pct, lo=0, hi=1); check_number('full_pct', full_pct, lo=0, hi=1)
    if not head_pct < full_pct:
        raise CnnTricksError(f"head_pct={head_pct!r}, full_pct={full_pct!r} are not valid; need 0 <= head_pct < full_pct <= 1")
    steps = n_groups - 1
    return {0.: 1, **{head_pct + (full_pct - head_pct) * k / steps: 1 + k for k in range(1, steps + 1)}}


def auto_base_lr(dls, lr: float = 6e-4, full_at: int = 100) -> float:
    """`lr` when the training set has at least `full_at` images per class, else `lr * (per_class / full_at) ** 1.5`.
    Chosen on tf_efficientnet_lite0 from seed-paired runs at 10, 30 and 100 images per class (bench/transfer_variants.py;
    figures in bench/RESULTS.md). With few images fine-tuning mostly moves the body away from features its probe head
    already separates, so the LR falls faster than the data."""
    check_positive('lr', lr); check_positive('full_at', full_at)
    n, c = len(dls.train_ds), getattr(dls, 'c', None)
    if not c or not n: return lr
    return lr * min(1., n / c / full_at) ** 1.5


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
    Stopped early (an exception or Ctrl-C), the learner may be left with frozen groups: `learn.unfreeze_all()`."""
    _check_recipe_args(epochs=epochs, base_lr=base_lr, decay=decay, head_pct=head_pct, full_pct=full_pct, norm=norm,
                       warmup=warmup, l2sp=l2sp, schedule=schedule, init_head=init_head, kwargs=kwargs)
    if norm is None: norm = NormPolicy(affine=True, stats='frozen', scope='all')
    if self.opt is None: self.create_opt()
    n = len(self.opt.param_lists)
    gradual_schedule(n, head_pct, full_pct)  # a schedule that cannot run fails before the probe overwrites the head
    resuming = bool(kwargs.get('start_epoch'))
    if base_lr is None: base_lr = auto_base_lr(self.dls)
    else: _warn_if_far_above(base_lr, auto_base_lr(self.dls))
    if init_head and not resuming: self.probe_init_head()  # a resumed fit keeps the head it loaded
    if schedule == 'gradual':
        sched = GradualUnfreeze(schedule=gradual_schedule(n, head_pct, full_pct), unit='fraction', warmup=warmup, norm=norm)
    else:
        sched = LPFT(lp_pct=head_pct, warmup=warmup, ft_norm=norm)
    extra = [sched, DiscriminativeLR(decay)] + ([L2SP(alpha=l2sp, beta=0.)] if l2sp else [])
    if l2sp and 'wd' not in kwargs: kwargs['wd'] = 0.
    self.fit_one_cycle(epochs, base_lr, cbs=extra + list(L(cbs)), **kwargs)


def _warn_if_far_above(base_lr, auto_lr):
    if base_lr > LR_WARN_FACTOR * auto_lr:
        warnings.warn(f"base_lr={base_lr:.2g} is {base_lr / auto_lr:.0f}x auto_base_lr(dls)={auto_lr:.2g}: on a pretrained "
                      "body such LRs (e.g. lr_find's suggestions, made for a fresh head with everything training) move "
                      "the features away from what the probe head separates; leave base_lr=None for auto_base_lr",
                      stacklevel=3)


def _check_recipe_args(epochs, base_lr, decay, head_pct, full_pct, norm, warmup, l2sp, schedule, init_head, kwargs):
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
    fit_args = inspect.signature(Learner.fit_one_cycle).parameters
    unknown = [k for k in kwargs if k not in fit_args or k in ('self', 'n_epoch', 'lr_max', 'cbs')]
    if unknown: raise TypeError(f"fine_tune_gradual() got unexpected keyword argument(s) {', '.join(map(repr, unknown))}; "
                                "the extra ones go to fit_one_cycle")
    if 'start_epoch' in kwargs: check_count('start_epoch', kwargs['start_epoch'], allow_zero=True)
