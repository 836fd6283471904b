"`NormPolicy`: what norm layers inside frozen groups do -- affine parameters trainable or not, running statistics frozen or updated."
from __future__ import annotations

import torch
from torch import nn
from fastai.callback.core import Callback

from ..core import CnnTricksError, check_choice, unwrap_ddp

# `norm_layer_types`, not `norm_types`: a star import must not rebind fastai's `norm_types` tuple
__all__ = ['norm_layer_types', 'is_norm', 'has_running_stats', 'NormPolicy']


def _timm_norm_types():
    "timm's own norm layers (norm+act, RmsNorm, SimpleNorm, EvoNorm, FRN), found by name so a timm release without one still imports."
    import timm.layers as tl
    names = ['BatchNormAct2d', 'SyncBatchNormAct', 'FrozenBatchNormAct2d', 'FrozenBatchNorm2d', 'GroupNormAct',
             'GroupNorm1Act', 'GroupNorm', 'GroupNorm1', 'LayerNorm', 'LayerNorm2d', 'LayerNormAct', 'LayerNormAct2d',
             'RmsNorm', 'RmsNorm2d', 'RmsNormAct', 'RmsNormAct2d', 'SimpleNorm', 'SimpleNorm2d',
             'EvoNorm2dB0', 'EvoNorm2dB1', 'EvoNorm2dB2', 'EvoNorm2dS0', 'EvoNorm2dS0a', 'EvoNorm2dS1', 'EvoNorm2dS1a',
             'EvoNorm2dS2', 'EvoNorm2dS2a', 'FilterResponseNormAct2d', 'FilterResponseNormTlu2d']
    return tuple(t for t in (getattr(tl, n, None) for n in names) if isinstance(t, type))


def norm_layer_types() -> tuple:
    "Every norm layer class we know: torch's BatchNorm/InstanceNorm/GroupNorm/LayerNorm/RMSNorm and timm's (incl. norm+act layers)."
    torch_types = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)
    if hasattr(nn, 'RMSNorm'): torch_types += (nn.RMSNorm,)
    return torch_types + _timm_norm_types()


_NORM_TYPES = None


def is_norm(m: nn.Module) -> bool:
    "Is `m` a normalization layer (any torch or timm type)?"
    global _NORM_TYPES
    if _NORM_TYPES is None: _NORM_TYPES = norm_layer_types()
    return isinstance(m, _NORM_TYPES)


norm_types = norm_layer_types  # the older name, for code that imports it from here


def has_running_stats(m: nn.Module) -> bool:
    "Does `m` keep running statistics that train mode updates (BatchNorm family, EvoNorm-B)?"
    return is_norm(m) and isinstance(getattr(m, 'running_var', None), torch.Tensor)


class NormPolicy(Callback):
    """What norm layers inside frozen parameter groups do: `affine` parameters trainable or not, and running
    statistics `stats='frozen'` (eval mode) or `'update'` (train mode). `scope='all'` freezes the statistics of
    every norm layer, trainable groups included. Use it alone after `learn.freeze()`, or hand it to a schedule."""
    order = 16  # after TrainEvalCallback's model.train() and after a freezing schedule (15)

    def __init__(self,
                 affine: bool = True,  # norm weights/biases in frozen groups keep training (fastai's `train_bn`)
                 stats: str = 'frozen',  # 'frozen': eval mode (ImageNet statistics kept); 'update': train mode
                 scope: str = 'frozen'):  # 'frozen': only norm layers of frozen groups; 'all': every norm layer's stats
        if not isinstance(affine, bool): raise CnnTricksError(f"affine={affine!r} is not valid; use True or False")
        check_choice('stats', stats, ('frozen', 'update'))
        check_choice('scope', scope, ('frozen', 'all'))
        self.affine, self.stats, self.scope = affine, stats, scope

    def __repr__(self): return f"NormPolicy(affine={self.affine}, stats={self.stats!r}, scope={self.scope!r})"

    def _norm_groups(self, learn):
        "(norm module, its group index) for every norm layer with parameters, and the norm params per group."
        gidx = {id(p): i for i, g in enumerate(learn.opt.param_lists) for p in g}
        out = []
        for m in unwrap_ddp(learn.model).modules():
            if not is_norm(m): continue
            own = list(m.parameters(recurse=False))
            out.append((m, gidx.get(id(own[0])) if own else None, own))
        return out

    def frozen_groups(self, learn) -> set:
        "Groups whose non-norm parameters are all frozen (the norm parameters follow this policy, not the schedule)."
        norm_ids = {id(p) for m, _, own in self._norm_groups(learn) for p in own}
        frozen = set()
        for i, g in enumerate(learn.opt.param_lists):
            rest = [p for p in g if id(p) not in norm_ids]
            if (rest and not any(p.requires_grad for p in rest)) or (not rest and not any(p.requires_grad for p in g)):
                frozen.add(i)
        return frozen

    def apply(self, learn, frozen=None):
        "Set norm parameters' `requires_grad` and norm layers' train/eval mode for the current frozen set."
        if learn.opt is None: learn.create_opt()
        if frozen is None: frozen = self.frozen_groups(learn)
        training = learn.model.training
        for m, gi, own in self._norm_groups(learn):
            in_frozen = gi in frozen
            if in_frozen:
                for p in own:
                    if p.requires_grad and not self.affine: p.grad = None
                    p.requires_grad_(self.affine)
            if has_running_stats(m):
                keep = self.stats == 'frozen' and (in_frozen or self.scope == 'all')
                m.train(training and not keep)

    def before_train(self): self.apply(self.learn)
