"`Learner.fine_tune_gradual`: a one-call transfer recipe like `fine_tune`, with defaults chosen on few-shot benchmarks."
from __future__ import annotations

from fastcore.basics import patch
from fastcore.foundation import L
from fastcore.meta import delegates
from fastai.learner import Learner
from fastai.callback.schedule import fit_one_cycle  # noqa: F401  (patches Learner.fit_one_cycle)

from ..core import CnnTricksError, check_positive
from .forgetting import L2SP
from .lrs import DiscriminativeLR
from .norms import NormPolicy
from .schedules import GradualUnfreeze, LPFT
from .head_init import probe_init_head  # noqa: F401  (patches Learner.probe_init_head)

__all__ = ['gradual_schedule', 'auto_base_lr', 'fine_tune_gradual']


def gradual_schedule(n_groups: int, head_pct: float = 0.25, full_pct: float = 0.75) -> dict:
    "`{fraction of training: n trainable groups}`: the head alone until `head_pct`, then one group more at even steps until all train at `full_pct`."
    if not 0 <= head_pct < full_pct <= 1:
        raise CnnTricksError(f"head_pct={head_pct!r}, full_pct={full_pct!r} are not valid; need 0 <= head_pct < full_pct <= 1")
    steps = n_groups - 1
    return {0.: 1, **{head_pct + (full_pct - head_pct) * k / steps: 1 + k for k in range(1, steps + 1)}}


def auto_base_lr(dls, lr: float = 6e-4, full_at: int = 100) -> float:
    """`lr` when the training set has at least `full_at` images per class, else `lr * (per_class / full_at) ** 1.5`
    (10 per class: 1.9e-5; 30: 9.9e-5). Chosen on tf_efficientnet_lite0 at 64 px, 6 epochs, from seed-paired runs
    (bench/transfer_variants.py; logs in bench/RESULTS.md): at 100 per class 6e-4 beat 3e-4 (Fashion-MNIST +1.3 points,
    digits +0.2); at 30 per class 1.6e-4 ended 1.5 points below its own probe start on digits while half that LR
    ended level with it (and 0.5 above on Fashion-MNIST); at 10 per class every LR from 1.9e-5 to 9.5e-5 ended
    0.2-1.0 above the probe. With few images fine-tuning mostly moves the body away from features its probe head
    already separates, so the LR falls faster than the data."""
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
    images shifts every layer's statistics, (3) Adam at 1e-3-scale LRs moves every body weight by ~lr per step."""
    if not isinstance(epochs, int) or epochs < 1: raise CnnTricksError(f"epochs={epochs!r} is not valid; it must be an int >= 1")
    if base_lr is None: base_lr = auto_base_lr(self.dls)
    check_positive('base_lr', base_lr)
    if schedule not in ('gradual', 'lpft'): raise CnnTricksError(f"schedule={schedule!r} is not valid; choose 'gradual' or 'lpft'")
    if norm is None: norm = NormPolicy(affine=True, stats='frozen', scope='all')
    if self.opt is None: self.create_opt()
    if init_head: self.probe_init_head()
    n = len(self.opt.param_lists)
    if schedule == 'gradual':
        sched = GradualUnfreeze(schedule=gradual_schedule(n, head_pct, full_pct), unit='fraction', warmup=warmup, norm=norm)
    else:
        sched = LPFT(lp_pct=head_pct, warmup=warmup, ft_norm=norm)
    extra = [sched, DiscriminativeLR(decay)] + ([L2SP(alpha=l2sp, beta=0.)] if l2sp else [])
    if l2sp and 'wd' not in kwargs: kwargs['wd'] = 0.
    self.fit_one_cycle(epochs, base_lr, cbs=extra + list(L(cbs)), **kwargs)
