"Shared plumbing: layer lookup by name, leaving a model as found, normalization stats, clear errors."
from __future__ import annotations
import difflib
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ['CnnTricksError', 'get_layer', 'layer_name', 'model_snapshot', 'preserve_model', 'norm_stats',
           'model_device', 'check_choice', 'check_positive']


class CnnTricksError(ValueError):
    "An error the user can fix: the message says what was wrong and what is valid."


def check_choice(name, value, valid):
    "Raise if `value` is not one of `valid`, naming the argument `name`."
    if value not in valid:
        raise CnnTricksError(f"{name}={value!r} is not valid; choose one of {', '.join(map(repr, valid))}")
    return value


def check_positive(name, value, allow_zero=False):
    "Raise unless `value` is a number > 0 (or >= 0 with `allow_zero`)."
    ok = isinstance(value, (int, float)) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise CnnTricksError(f"{name}={value!r} is not valid; it must be a number {'>=' if allow_zero else '>'} 0")
    return value


def _unwrap(model):
    "The model itself, also when given a Learner."
    return getattr(model, 'model', model) if not isinstance(model, nn.Module) else model


def get_layer(model: nn.Module, layer) -> nn.Module:
    "The module of `model` named `layer` (a dotted `named_modules` name, or a module of the model)."
    if isinstance(layer, nn.Module):
        if not any(m is layer for m in model.modules()):
            raise CnnTricksError(f"layer {type(layer).__name__} is not a module of this model")
        return layer
    if not isinstance(layer, str):
        raise CnnTricksError(f"layer={layer!r} is not valid; pass a dotted module name (see learn.layer_names()) "
                             "or a module of the model")
    modules = dict(model.named_modules())
    if layer in modules and layer != '': return modules[layer]
    # Names relative to a wrapped backbone (e.g. fastai's Sequential(TimmBody, head) -> '0.model.<name>').
    for prefix in ('model.', '0.model.', '0.', 'backbone.', 'body.'):
        if prefix + layer in modules: return modules[prefix + layer]
    names = [n for n in modules if n]
    close = difflib.get_close_matches(layer, names, n=5, cutoff=0.4)
    if not close: close = [n for n in names if layer.split('.')[-1] in n][:5] or names[:5]
    raise CnnTricksError(f"no layer named {layer!r} in {type(model).__name__}; closest names: {', '.join(close)}")


def layer_name(model: nn.Module, module: nn.Module) -> str:
    "The dotted name of `module` inside `model`."
    for n, m in model.named_modules():
        if m is module: return n
    raise CnnTricksError(f"{type(module).__name__} is not a module of this model")


def _hook_counts(model):
    return [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks),
             len(getattr(m, '_backward_pre_hooks', {}))) for m in model.modules()]


def model_snapshot(model: nn.Module) -> dict:
    "Everything interpretation code promises to leave alone: modes, grad flags, hook counts, memory format."
    params = list(model.parameters())
    return dict(training=[m.training for m in model.modules()],
                requires_grad=[p.requires_grad for p in params],
                hooks=_hook_counts(model),
                channels_last=[p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last)
                               and not p.is_contiguous() for p in params])


@contextmanager
def preserve_model(model: nn.Module):
    """Run the body and put `model` back as found: train/eval mode per module, `requires_grad` flags,
    no hooks left, parameter grads untouched -- also when the body raises."""
    modules, params = list(model.modules()), list(model.parameters())
    training = [m.training for m in modules]
    flags = [p.requires_grad for p in params]
    grads = [p.grad for p in params]
    hooks = [(dict(m._forward_hooks), dict(m._forward_pre_hooks), dict(m._backward_hooks)) for m in modules]
    try: yield model
    finally:
        for m, t in zip(modules, training): m.training = t
        for p, f, g in zip(params, flags, grads): p.requires_grad_(f); p.grad = g
        for m, (fh, fph, bh) in zip(modules, hooks):
            for store, keep in ((m._forward_hooks, fh), (m._forward_pre_hooks, fph), (m._backward_hooks, bh)):
                for k in [k for k in store if k not in keep]: del store[k]


def model_device(model: nn.Module) -> torch.device:
    "The device of the model's first parameter (CPU for a model without parameters)."
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device('cpu')


def norm_stats(learn_or_dls=None, model=None):
    """(mean, std) the model expects, as 3-tuples: from a `Normalize` in the DataLoaders' batch transforms,
    else timm's `pretrained_cfg`, else `None` (inputs are used as they are)."""
    dls = getattr(learn_or_dls, 'dls', learn_or_dls)
    model = model if model is not None else getattr(learn_or_dls, 'model', None)
    for t in getattr(getattr(dls, 'after_batch', None), 'fs', []) or []:
        if type(t).__name__ == 'Normalize' and getattr(t, 'mean', None) is not None:
            return tuple(t.mean.flatten().tolist()), tuple(t.std.flatten().tolist())
    if model is not None:
        for m in model.modules():
            cfg = getattr(m, 'pretrained_cfg', None)
            if cfg and 'mean' in cfg: return tuple(cfg['mean']), tuple(cfg['std'])
    return None
