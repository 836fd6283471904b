"""A throw-away copy of a model for many no-grad forward passes (occlusion windows): eval mode, channels-last, and
every BatchNorm that directly follows a convolution folded into that convolution's weights.

In eval mode a BatchNorm is a per-channel affine map, so `bn(conv(x))` equals a convolution with rescaled weights
and a bias; folding saves one pass over every activation (timings: bench/RESULTS.md). The copy is checked against
the original on the caller's input and discarded if they differ; the user's model is never touched.
"""
from __future__ import annotations

import torch
from torch import nn

from ..memformat import memory_format_for

__all__ = ['set_module', 'light_copy', 'fold_batchnorms', 'inference_copy', 'activation_bytes']


def _after_bn(bn):
    "What is left of a BatchNorm once folded: nothing, or for timm's BatchNormAct2d its dropout and activation."
    if type(bn) in (nn.BatchNorm2d, nn.SyncBatchNorm): return nn.Identity()
    if hasattr(bn, 'act') and type(bn).__name__ == 'BatchNormAct2d':
        return nn.Sequential(getattr(bn, 'drop', nn.Identity()), bn.act)
    return None  # a BatchNorm subclass whose forward we do not know: left alone


def _has_foldable(model):
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and _after_bn(m) is not None for m in model.modules())


def _conv_bn_pairs(model, x):
    """(conv, bn name) for each BatchNorm whose input is exactly a Conv2d's output, found in one traced forward pass;
    -> (pairs, the model's output on `x`)."""
    outputs, pairs, hooks = {}, [], []  # outputs keeps each conv output alive, so no id is reused mid-pass
    names = {m: n for n, m in model.named_modules()}
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(lambda mod, i, o: outputs.__setitem__(id(o), (mod, o))))
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and _after_bn(m) is not None:
            hooks.append(m.register_forward_pre_hook(
                lambda mod, i: pairs.append((outputs.get(id(i[0]), (None,))[0], names[mod])) if i else None))
    try:
        with torch.no_grad(): out = model(x)
    finally:
        for h in hooks: h.remove()
    seen, res = set(), []
    for conv, name in pairs:
        if conv is None or id(conv) in seen: continue  # not after a conv, or a conv shared by several norms
        seen.add(id(conv)); res.append((conv, name))
    return res, out


def activation_bytes(model, x):
    "One no-grad forward of `x` that also counts the bytes of every leaf module's output -> (output, bytes per image)."
    sizes = []
    hooks = [m.register_forward_hook(lambda m, i, o: sizes.append(o.numel() * o.element_size()
                                                               if isinstance(o, torch.Tensor) else 0))
             for m in model.modules() if next(m.children(), None) is None]
    try:
        with torch.no_grad(): out = model(x)
    finally:
        for h in hooks: h.remove()
    return out, max(sum(sizes) // max(len(x), 1), 1)


def light_copy(model: nn.Module) -> nn.Module:
    """A copy of the module tree that shares the parameters' storage (buffers are cloned): each module and each
    parameter is a new object, and so are their dicts (children, parameters, buffers, hooks), so replacing a child, a parameter, a buffer or a
    hook in the copy, or converting its memory format, leaves `model` as it is. A deep copy would copy every weight
    first: on small images that costs as much as the occluded windows' forward passes (bench/RESULTS.md)."""
    memo = {}

    def param(p):
        if p is None: return None
        if id(p) not in memo: memo[id(p)] = nn.Parameter(p.detach(), requires_grad=p.requires_grad)
        return memo[id(p)]

    def module(m):
        if id(m) in memo: return memo[id(m)]
        c = memo[id(m)] = object.__new__(type(m))  # copy.copy's own path, without its generic dispatch per object
        c.__dict__.update({k: v.copy() if isinstance(v, (dict, set)) else v for k, v in vars(m).items()})
        c._parameters = {k: param(p) for k, p in m._parameters.items()}
        c._buffers = {k: None if b is None else b.clone() for k, b in m._buffers.items()}  # small; a train-mode
        c._modules = {k: None if s is None else module(s) for k, s in m._modules.items()}  # pass updates them in place
        return c
    return module(model)


def set_module(model, name, new):
    "Replace the submodule of `model` called `name` (dotted) by `new`."
    parent, _, leaf = name.rpartition('.')
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def _fold(model, pairs):
    for conv, name in pairs:
        bn = model.get_submodule(name)
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else 1 / torch.sqrt(bn.running_var + bn.eps)
        shift = (bn.bias if bn.affine else 0) - bn.running_mean * scale
        w = conv.weight
        conv.weight = nn.Parameter(w * scale.reshape(-1, *([1] * (w.dim() - 1))), requires_grad=False)
        b = conv.bias if conv.bias is not None else torch.zeros_like(scale)
        conv.bias = nn.Parameter(b * scale + shift, requires_grad=False)
        set_module(model, name, _after_bn(bn))
    return len(pairs)


@torch.no_grad()
def fold_batchnorms(model: nn.Module, x: torch.Tensor) -> int:
    "Fold, in place, every eval-mode BatchNorm fed directly by a Conv2d into it; returns how many were folded."
    return _fold(model, _conv_bn_pairs(model, x)[0]) if _has_foldable(model) else 0


def inference_copy(model: nn.Module, x: torch.Tensor, *, channels_last: bool = True, fold_bn: bool = True,
                   rtol: float = 1e-4, probe: bool = False):
    """An eval-mode deep copy of `model` for repeated no-grad inference on inputs like `x`: channels-last if asked
    and BatchNorms folded into their convolutions. Falls back to an unfolded copy when the folded one's output on
    `x` differs from the original's by more than `rtol` of its scale (e.g. a conv output also used elsewhere).
    With `probe`, -> (copy, its output on `x`, activation bytes per image): the check's own forward pass, so a caller
    needing the logits and the memory a window costs runs no pass of its own (they dominate small images)."""
    fmt = memory_format_for(channels_last)

    def fresh():
        m = light_copy(model).eval().to(memory_format=fmt)
        for p in m.parameters(): p.requires_grad_(False)
        return m

    def done(m):
        return (m, *activation_bytes(m, xi)) if probe else m
    m, xi = fresh(), x.contiguous(memory_format=fmt)
    if not fold_bn or x.dim() != 4 or not _has_foldable(m): return done(m)
    pairs, ref = _conv_bn_pairs(m, xi)
    if not pairs: return done(m)
    _fold(m, pairs)
    m = m.to(memory_format=fmt)
    out, per_image = activation_bytes(m, xi)
    ok = (isinstance(ref, torch.Tensor) and isinstance(out, torch.Tensor) and out.shape == ref.shape
          and bool((out - ref).abs().max() <= rtol * ref.abs().max().clamp_min(1e-6)))
    if not ok: return done(fresh())
    return (m, out, per_image) if probe else m
