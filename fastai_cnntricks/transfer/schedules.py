"""Freeze/unfreeze schedules over the stage groups: `GradualUnfreeze` (ULMFiT), `ChainThaw` (Felbo et al. 2017), `LPFT`
(Kumar et al. 2022). Freezing is `requires_grad` only: the optimizer keeps its parameter groups (ParamScheduler works)
and the Adam/SGD state of groups already training (fastai's `freeze_to` clears it).

Their defaults carry what `fine_tune_gradual` taught (each can be turned off; the measurements are in bench/RESULTS.md,
`schedules_alone`): a head-only first phase starts from the probe head (`init_head`), every norm layer keeps its
pretrained statistics (`norm`), a newly thawed group warms up (`warmup`), group LRs decay from the head down
(`decay`, unless a `DiscriminativeLR` callback sets them), and a peak LR far above `auto_base_lr` warns (`warn_lr`)."""
from __future__ import annotations
import bisect

import numpy as np

from ..core import (CnnTricksError, check_bool, check_choice, check_count, check_fraction, check_positive, check_type,
                    unwrap_ddp)
from .lrs import LRScaler, DiscriminativeLR, _check_decay
from .norms import NormPolicy
from .head_init import probe_init_head  # noqa: F401  (patches Learner.probe_init_head)

__all__ = ['FreezeSchedule', 'GradualUnfreeze', 'ChainThaw', 'LPFT']


class FreezeSchedule(LRScaler):
    """Base of the freezing schedules: a list of phases (start in epochs, set of trainable group indices), applied
    at epoch and batch boundaries from the position in training alone, so a fit resumed with `start_epoch` is in the
    same state as an uninterrupted one. A group that becomes trainable warms up its LR linearly over `warmup` epochs.
Why each default (`init_head`, `norm`, `decay`, `warn_lr`): the module docstring; figures in bench/RESULTS.md."""
    order = 15  # after DistributedTrainer (11): DDP must have registered every parameter before we freeze any
    run_valid = False

    def __init__(self,
                 warmup: float = 0.5,  # epochs of linear LR warm-up for a newly thawed group (0: off)
                 norm: NormPolicy | None = None,  # norm layers' policy (None: NormPolicy(scope='all'), statistics frozen everywhere)
                 init_head: bool = True,  # a head-only first phase starts from `learn.probe_init_head()` (not when resuming)
                 decay: float = 0.7,  # LR factor between a group and the one above it (1: off; a DiscriminativeLR callback overrides it)
                 warn_lr: bool = True):  # warn at before_fit when the head's peak LR is over LR_WARN_FACTOR x auto_base_lr(dls)
        check_positive('warmup', warmup, allow_zero=True)
        if norm is not None: check_type('norm', norm, NormPolicy, 'a NormPolicy(affine=..., stats=...) or None')
        self.warmup, self.norm = warmup, norm
        self.init_head, self.warn_lr = check_bool('init_head', init_head), check_bool('warn_lr', warn_lr)
        self.decay = _check_decay(decay)

    # -- to define in subclasses
    def phases(self, n_groups: int, n_epoch: int) -> list[tuple[float, frozenset]]:
        "[(start epoch, trainable group indices), ...] sorted by start, the first starting at 0."
        raise NotImplementedError

    # -- machinery
    def _policy(self):
        others = [cb for cb in self.learn.cbs if isinstance(cb, NormPolicy)]
        if others and self.norm is not None and others[0] is not self.norm:
            raise CnnTricksError(f"{type(self).__name__} has norm={self.norm!r} and a NormPolicy callback is also present; "
                                 "keep one of them")
        return others[0] if others else (self.norm if self.norm is not None else NormPolicy(scope='all'))

    def _setup(self):
        others = [cb for cb in self.learn.cbs if isinstance(cb, FreezeSchedule) and cb is not self]
        if others:
            raise CnnTricksError(f"conflicting freezing schedules: {type(self).__name__} and "
                                 f"{', '.join(type(o).__name__ for o in others)} would both set which groups train; keep one")
        if self.learn.opt is None: self.learn.create_opt()
        n = len(self.opt.param_lists)
        if n < 2: raise CnnTricksError(f"{type(self).__name__} needs at least a body and a head, but the optimizer has {n} "
                                       "parameter group; create the Learner with splitter=timm_splitter")
        ph = sorted(self.phases(n, self.n_epoch), key=lambda t: t[0])
        if not ph or ph[0][0] > 0: raise CnnTricksError(f"{type(self).__name__}: the schedule must start at epoch 0")
        self._starts, self._sets = [s for s, _ in ph], [frozenset(g) for _, g in ph]
        # where each group last became trainable, per phase (for the warm-up); groups of the first phase never warm up
        self._thawed_at, last = [], {}
        for k, (s, g) in enumerate(zip(self._starts, self._sets)):
            prev = self._sets[k - 1] if k else g
            last = {i: (s if i not in prev else last.get(i)) for i in g}
            self._thawed_at.append(last)
        self._n_groups, self._phase, self._policy_cb = n, None, self._policy()
        ends = self._starts[1:] + [max(float(self.n_epoch), self._starts[-1])]
        self._warm = [self._warmup_len(e - s) for s, e in zip(self._starts, ends)]
        self._own_decay = getattr(self, 'decay', 1) != 1 and not any(isinstance(cb, DiscriminativeLR) for cb in self.learn.cbs)

    def _warmup_len(self, phase_len):
        "Epochs of warm-up for groups thawed in a phase of `phase_len` epochs."
        return self.warmup

    def before_fit(self):
        super().before_fit()
        self._ready = False

    def before_train(self):
        if not getattr(self, '_ready', False):  # the first training epoch of this fit (validate() also calls before_fit)
            self._setup(); self._ready = True
            # a resumed fit (start_epoch > 0) keeps the head it loaded
            if getattr(self, 'init_head', False) and self.epoch == 0 and self._sets[0] == {self._n_groups - 1}:
                self.learn.probe_init_head()
        super().before_train()
        self._phase = None  # TrainEvalCallback just put every module in train mode: re-apply the norm policy
        self._update(float(self.epoch))  # `iter`/`n_iter` are stale until the first batch

    def before_batch(self):
        if self.training: self._update(self._pos())

    def _pos(self): return self.epoch + self.iter / max(self.n_iter, 1)

    def _update(self, pos):
        k = bisect.bisect_right(self._starts, pos + 1e-9) - 1
        if k != self._phase: self._apply(k)

    def _apply(self, k):
        trainable = self._sets[k]
        for i, g in enumerate(self.opt.param_lists):
            on = i in trainable
            for p in g:
                if p.requires_grad and not on: p.grad = None  # a stale zero grad would still move it (momentum, wd)
                p.requires_grad_(on)
        self._policy_cb.apply(self.learn, frozen=set(range(self._n_groups)) - trainable)
        self._phase = k

    def trainable_groups(self, epoch: float) -> frozenset:
        "The groups trainable at position `epoch` (after a fit has started)."
        return self._sets[bisect.bisect_right(self._starts, epoch + 1e-9) - 1]

    def group_factors(self):
        if self._phase is None or not (self.warmup or self._own_decay): return None
        f = np.ones(self._n_groups)
        if self._own_decay: f *= self.decay ** np.arange(self._n_groups - 1, -1, -1, dtype=float)
        if self.warmup:
            pos, step = self._pos(), 1 / max(self.n_iter, 1)
            for i, t in self._thawed_at[self._phase].items():
                if t is None: continue
                k = bisect.bisect_right(self._starts, t + 1e-9) - 1  # the phase in which group i thawed
                f[i] *= min(1., (pos - t + step) / self._warm[k])
        return f

    def after_fit(self):
        super().after_fit()
        self._ready = False


def _check_groups(n, total, name):
    "A number of trainable groups: an int >= 1, -1 or 'all' (all `total`); `total=None` checks the form only."
    if n is None or (isinstance(n, str) and n == 'all') or (n == -1 and not isinstance(n, bool)): return total
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise CnnTricksError(f"{name}={n!r} is not valid; a number of trainable groups is an int >= 1, -1 or 'all'")
    if total is not None and n > total:
        raise CnnTricksError(f"{name}: the schedule names {n} trainable groups but the model has only {total} "
                             f"(see learn.group_summary()); use at most {total} or 'all'")
    return int(n)


class GradualUnfreeze(FreezeSchedule):
    """Thaw groups from the head down (ULMFiT): `start` groups train first, one more every `every` epochs; or an
    explicit `schedule` `{epoch: n_trainable_groups}` (keys may be fractions of training, e.g. `{0: 1, .5: 4, .8: 'all'}`)."""
    def __init__(self,
                 every: float = 1,  # epochs between thaws (may be fractional)
                 start: int = 1,  # groups trainable at first (1 = the head alone)
                 step: int = 1,  # groups thawed at each step
                 schedule: dict | None = None,  # {epoch or fraction: n trainable groups counted from the head}
                 unit: str = 'auto',  # keys of `schedule`: 'epoch', 'fraction' (of training) or 'auto'
                 warmup: float = 0.5,  # epochs of linear LR warm-up for a newly thawed group (0: off)
                 norm: NormPolicy | None = None,  # norm layers' policy (None: NormPolicy(scope='all'))
                 **kwargs):  # init_head, decay, warn_lr: see FreezeSchedule
        super().__init__(warmup, norm, **kwargs)
        check_positive('every', every)
        check_choice('unit', unit, ('auto', 'epoch', 'fraction'))
        _check_groups(start, None, 'start'); check_count('step', step)
        if schedule is not None:
            if not isinstance(schedule, dict) or not schedule:
                raise CnnTricksError(f"schedule={schedule!r} is not valid; pass a dict {{epoch: n_trainable_groups}}")
            for k, n in schedule.items():
                check_positive('schedule key', k, allow_zero=True); _check_groups(n, None, 'schedule')
        self.every, self.start, self.step, self.schedule, self.unit = every, start, step, schedule, unit

    def _schedule_epochs(self, n_epoch):
        unit = self.unit
        if unit == 'auto':
            unit = 'fraction' if all(k <= 1 for k in self.schedule) and any(k != int(k) for k in self.schedule) else 'epoch'
        scale = n_epoch if unit == 'fraction' else 1
        return {k * scale: v for k, v in self.schedule.items()}

    def phases(self, n_groups, n_epoch):
        name = type(self).__name__
        if self.schedule is not None:
            sched = self._schedule_epochs(n_epoch)
            if 0 not in sched: sched[0] = 1
        else:
            s = _check_groups(self.start, n_groups, name)
            sched, n, e = {0: s}, s, 0.
            while n < n_groups:
                e += self.every
                n = min(n_groups, n + self.step)
                sched[e] = n
        return [(e, range(n_groups - _check_groups(n, n_groups, name), n_groups)) for e, n in sorted(sched.items())]


class ChainThaw(FreezeSchedule):
    """Chain-thaw (Felbo et al. 2017): the head alone, then each group alone from the first to the last, then
    everything; phases of equal length unless `phase_epochs` says how long each of the n_groups+1 phases is."""
    def __init__(self, phase_epochs: float | list | None = None,  # one length for all phases, or one per phase
                 warmup: float = 0.5,  # epochs of LR warm-up for a thawed group, at most half of its phase (0: off)
                 norm: NormPolicy | None = None,  # norm layers' policy (None: NormPolicy(scope='all'))
                 **kwargs):  # init_head, decay, warn_lr: see FreezeSchedule
        super().__init__(warmup, norm, **kwargs)
        if isinstance(phase_epochs, (list, tuple)):
            if not phase_epochs: raise CnnTricksError("phase_epochs=[] is not valid; give one length per phase")
            for pe in phase_epochs: check_positive('phase_epochs', pe)
        elif phase_epochs is not None: check_positive('phase_epochs', phase_epochs)
        self.phase_epochs = phase_epochs

    def _warmup_len(self, phase_len):
        return min(self.warmup, phase_len / 2)  # each group trains alone for one short phase: reach its full LR in it

    def phases(self, n_groups, n_epoch):
        sets = [{n_groups - 1}] + [{i} for i in range(n_groups - 1)] + [set(range(n_groups))]
        pe = self.phase_epochs
        if pe is None: lens = [n_epoch / len(sets)] * len(sets)
        elif not isinstance(pe, (list, tuple)): lens = [pe] * len(sets)
        else:
            lens = list(pe)
            if len(lens) != len(sets):
                raise CnnTricksError(f"phase_epochs has {len(lens)} entries but ChainThaw has {len(sets)} phases "
                                     f"(head, each of the {n_groups - 1} body groups, all)")
        starts = np.concatenate([[0.], np.cumsum(lens)[:-1]])
        return list(zip(starts.tolist(), sets))


class LPFT(FreezeSchedule):
    """Linear probe, then fine-tune (Kumar et al. 2022): the head alone with the body frozen and every norm layer of
    the body in eval mode for `lp_epochs` (or the fraction `lp_pct` of training), then every group trains."""
    def __init__(self, lp_epochs: float | None = None,  # epochs of linear probing
                 lp_pct: float = 0.5,  # ... or this fraction of training when `lp_epochs` is None
                 warmup: float = 0.5,  # epochs of LR warm-up for the body when it thaws
                 ft_norm: NormPolicy | None = None,  # norm policy while fine-tuning (None: NormPolicy(scope='all'))
                 **kwargs):  # init_head, decay, warn_lr: see FreezeSchedule
        super().__init__(warmup, None, **kwargs)
        if lp_epochs is not None: check_positive('lp_epochs', lp_epochs)
        check_fraction('lp_pct', lp_pct, allow_zero=False)
        if ft_norm is not None: check_type('ft_norm', ft_norm, NormPolicy, 'a NormPolicy(affine=..., stats=...) or None')
        self.lp_epochs, self.lp_pct, self.ft_norm = lp_epochs, lp_pct, ft_norm
        self._lp_norm = NormPolicy(affine=False, stats='frozen')

    def _setup(self):
        from .groups import head_module
        model = unwrap_ddp(self.learn.model)
        try: head = {id(p) for p in head_module(model).parameters()}
        except CnnTricksError as e: raise CnnTricksError(f"LPFT cannot find the head of the model: {e}") from e
        if self.learn.opt is None: self.learn.create_opt()
        last = {id(p) for p in self.opt.param_lists[-1]}
        if len(self.opt.param_lists) < 2 or not head or not head <= last:
            raise CnnTricksError("LPFT cannot find the head: the last parameter group is not the model's classifier; "
                                 "create the Learner with splitter=timm_splitter (or a splitter whose last group is the head)")
        super()._setup()

    def _policy(self): return self._lp_norm

    def _apply(self, k):
        self._policy_cb = self._lp_norm if k == 0 else (self.ft_norm or NormPolicy(scope='all'))
        super()._apply(k)

    def phases(self, n_groups, n_epoch):
        lp = self.lp_epochs if self.lp_epochs is not None else self.lp_pct * n_epoch
        return [(0., {n_groups - 1}), (lp, set(range(n_groups)))]
