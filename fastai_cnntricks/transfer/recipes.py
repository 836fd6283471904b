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

__all__ = ['gradual_schedule', 'fine_tune_gradual']


def gradual_schedule(n_groups: int, head_pct: float = 0.25, full_pct: float = 0.75) -> dict:
    "`{fraction of training: n trainable groups}`: the head alone until `head_pct`, then one group more at even steps until all train at `full_pct`."
    if not 0 <= head_pct < full_pct <= 1:
        raise CnnTricksError(f"head_pct={head_pct!r}, full_pct={full_pct!r} are not valid; need 0 <= head_pct < full_pct <= 1")
    steps = n_groups - 1
    return {0.: 1, **{head_pct + (full_pct - head_pct) * k / steps: 1 + k for k in range(1, steps + 1)}}


@patch
@delegates(Learner.fit_one_cycle, but=['lr_max', 'cbs'])
def fine_tune_gradual(self: Learner,
                      epochs: int,  # total epochs, head-only phase included
                      base_lr: float = 3e-4,  # the head's peak LR; each group below gets `decay` times the one above
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
