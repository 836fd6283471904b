"Parameter groups that follow a timm model's own stages (stem, stage 1..n, head), for `freeze_to` and `slice` LRs."
from __future__ import annotations

import pandas as pd
from torch import nn
from fastcore.basics import patch
from fastai.learner import Learner

from ..core import CnnTricksError, check_bool

__all__ = ['timm_groups', 'timm_splitter', 'timm_fine_splitter', 'head_module', 'group_names']  # + Learner.group_summary, unfreeze_all


def _timm_model(model):
    "The timm model inside `model` (itself, or fastai's `TimmBody.model`), else None."
    for m in (model, getattr(model, 'model', None)):
        if m is not None and hasattr(m, 'group_matcher') and hasattr(m, 'get_classifier'): return m
    return None


def head_module(model: nn.Module) -> nn.Module:
    "The new head: timm's classifier, or the last child of fastai's `Sequential(body, head)`."
    timm_m = _timm_model(model)
    if timm_m is not None and sum(p.numel() for p in timm_m.get_classifier().parameters()):
        return timm_m.get_classifier()
    children = [c for c in model.children() if any(True for _ in c.parameters())]
    if not children: raise CnnTricksError(f"cannot find the head of {type(model).__name__}: it has no child with parameters")
    return children[-1]


def _timm_stage_groups(m, fine):
    "timm's own stage grouping (`group_matcher`), as lists of (name, param) in order; register tokens with the embeddings."
    from timm.models import group_parameters
    params = dict(m.named_parameters())
    groups = [list(names) for names in group_parameters(m, m.group_matcher(coarse=not fine)).values()]
    # timm < 1.0.28's ViT/Eva matchers leave `reg_token` unmatched, so it lands in the last group, thawed with the head
    # (pytorch-image-models#2712). The model holds it as its `reg_token` attribute: a prefix token like cls_token.
    reg = 'reg_token' if isinstance(getattr(m, 'reg_token', None), nn.Parameter) else None
    if reg and reg not in groups[0]: groups = [[reg] + groups[0]] + [[n for n in g if n != reg] for g in groups[1:]]
    return [[(n, params[n]) for n in names] for names in groups if names]


def _child_groups(model):
    "Fallback: one group per top-level child that has parameters."
    return [list(c.named_parameters(prefix=n)) for n, c in model.named_children() if any(True for _ in c.parameters())]


def timm_groups(model: nn.Module, fine: bool = False) -> list[list[tuple[str, nn.Parameter]]]:
    """Named parameter groups, head last: stem + stages from timm's `group_matcher` (blocks with `fine=True`).
    Works on a timm model, fastai's `Sequential(TimmBody, head)`, or any `nn.Module` (split by top-level children)."""
    timm_m = _timm_model(model)
    if isinstance(model, nn.Sequential) and len(model) == 2 and timm_m is None and _timm_model(model[0]) is not None:
        body, head = _timm_model(model[0]), model[1]  # fastai's vision_learner over a timm model
        groups = [[(f'0.model.{n}', p) for n, p in g] for g in _timm_stage_groups(body, fine)]
        groups.append(list(head.named_parameters(prefix='1')))
    elif timm_m is model:
        clf = {id(p) for p in head_module(model).parameters()}
        groups = [[(n, p) for n, p in g if id(p) not in clf] for g in _timm_stage_groups(model, fine)]
        groups.append([(n, p) for n, p in model.named_parameters() if id(p) in clf])
    elif isinstance(model, nn.Sequential) and len(model) == 2:  # (body, head) of plain modules
        groups = _child_groups(model[0]) + [list(model[1].named_parameters(prefix='1'))]
        groups = [[(n if n.startswith('1.') else f'0.{n}', p) for n, p in g] for g in groups]
    else:
        groups = _child_groups(model)
    groups = [g for g in groups if g]
    if len(groups) < 2:
        raise CnnTricksError(f"{type(model).__name__} splits into {len(groups)} parameter group(s); "
                             "a splitter needs at least a body and a head")
    return groups


def timm_splitter(model: nn.Module, fine: bool = False):
    "fastai splitter: parameter groups stem, stages..., head (timm's `group_matcher`); pass as `splitter=`."
    return [[p for _, p in g] for g in timm_groups(model, fine)]


def timm_fine_splitter(model: nn.Module):
    "`timm_splitter` with one group per block (timm's fine `group_matcher`)."
    return timm_splitter(model, fine=True)


def _describe(names_per_group):
    "Short readable names for groups of parameter names: the shortest module prefixes that tell the groups apart."
    out = []
    for i, names in enumerate(names_per_group):
        others = {'.'.join(n.split('.')[:d]) for j, g in enumerate(names_per_group) if j != i for n in g
                  for d in range(1, len(n.split('.')))}
        def short(n):
            parts = n.split('.')[:-1] or n.split('.')  # module path, without 'weight'/'bias'
            for d in range(1, len(parts) + 1):
                if '.'.join(parts[:d]) not in others: return '.'.join(parts[:d])
            return '.'.join(parts)
        prefixes = list(dict.fromkeys(short(n) for n in names))
        out.append(', '.join(prefixes[:3]) + (f' (+{len(prefixes) - 3})' if len(prefixes) > 3 else ''))
    return out


def group_names(learn: Learner) -> list[str]:
    "Readable names of the optimizer's parameter groups, in order."
    pnames = {id(p): n for n, p in learn.model.named_parameters()}
    groups = learn.splitter(learn.model) if learn.opt is None else learn.opt.param_lists
    return _describe([[pnames.get(id(p), '?') for p in g] for g in groups])


@patch
def group_summary(self: Learner,
                  show: bool = False  # also print it (scripts); a notebook displays the returned table once by itself
                  ) -> pd.DataFrame:
    "A table of the parameter groups: name, parameter count, how many are trainable, and the current LR."
    check_bool('show', show)
    if self.opt is None: self.create_opt()
    names = group_names(self)
    rows = []
    for i, (name, ps, hp) in enumerate(zip(names, self.opt.param_lists, self.opt.hypers)):
        n, t = sum(p.numel() for p in ps), sum(p.numel() for p in ps if p.requires_grad)
        rows.append(dict(group=i, name=name, params=n, trainable=t,
                         state='trainable' if t == n else 'frozen' if t == 0 else 'partly (norm layers)',
                         lr=hp.get('lr')))
    df = pd.DataFrame(rows).set_index('group')
    if show: print(df.to_string())
    return df


@patch
def unfreeze_all(self: Learner) -> Learner:
    """Every parameter trainable and no schedule's LR factors left in the optimizer: the state to continue from after a
    schedule was stopped early (an exception, Ctrl-C) between phases. fastai's `unfreeze` plus the LR restore."""
    if self.opt is None: self.create_opt()
    unscaled = getattr(self.opt, 'unscaled_lrs', None)  # left by an LRScaler interrupted inside a step
    if unscaled is not None:
        for h, lr in zip(self.opt.hypers, unscaled): h['lr'] = lr
        self.opt.unscaled_lrs = None
    for g in self.opt.param_lists:
        for p in g: p.requires_grad_(True)
    return self
