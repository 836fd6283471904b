"Addressing layers: list them with output shapes, capture their activations, stop the forward pass early."
from __future__ import annotations
import math
from contextlib import contextmanager

import torch
from torch import nn
from fastai.learner import Learner
from fastcore.basics import patch

from ..core import CnnTricksError, check_choice, get_layer, layer_name, model_device, preserve_model
from ..transfer.norms import is_norm
from .inputs import check_image_size, model_dtype, model_in_channels, usable_model

__all__ = ['LAYER_KINDS', 'layer_names', 'capture', 'StopForward', 'as_maps', 'model_input_size']

_ACTS = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.LeakyReLU, nn.Sigmoid, nn.Tanh, nn.ELU, nn.Mish)
LAYER_KINDS = {'all': lambda m: True,
               'conv': lambda m: isinstance(m, nn.modules.conv._ConvNd),
               'linear': lambda m: isinstance(m, nn.Linear),
               'norm': is_norm,
               'act': lambda m: isinstance(m, _ACTS),
               'leaf': lambda m: next(m.children(), None) is None,
               'block': lambda m: next(m.children(), None) is not None}


class StopForward(Exception):
    "Raised by a hook once every activation we need is captured: the rest of the network is not computed."


def model_input_size(learn, size=None):
    "Input (H, W) for a dry pass: `size` (px or (h, w)), else the DataLoaders' item size, else timm's config, else 224."
    if size is not None: return check_image_size('size', size)
    try:
        x = learn.dls.valid.do_item(0)[0] if len(learn.dls.valid_ds) else None
        if x is not None and hasattr(x, 'shape'): return tuple(x.shape[-2:])
        if x is not None and hasattr(x, 'size'): return tuple(x.size[::-1])
    except Exception: pass
    cfg = getattr(learn.model, 'pretrained_cfg', None) or {}
    return tuple(cfg.get('input_size', (3, 224, 224))[-2:])


def as_maps(model: nn.Module, act: torch.Tensor) -> torch.Tensor:
    """A layer's output as (B, C, H, W) maps: conv outputs as they are, transformer tokens (B, N, C) laid back on
    their grid (class/register tokens dropped)."""
    if isinstance(act, (tuple, list)): act = act[0]
    if act.dim() == 4: return act
    if act.dim() == 3:
        n = act.shape[1]
        prefix = getattr(model, 'num_prefix_tokens', n - math.isqrt(n) ** 2)
        side = math.isqrt(n - prefix)
        if side * side == n - prefix:
            return act[:, prefix:].transpose(1, 2).reshape(act.shape[0], act.shape[2], side, side)
    if act.dim() == 2: return act[:, :, None, None]  # a vector (pooled features, logits): 1x1 maps
    raise CnnTricksError(f"the layer's output of shape {tuple(act.shape)} cannot be read as feature maps")


@contextmanager
def capture(model: nn.Module, layers, stop=True):
    """Hook `layers` (names or modules); yields a dict name -> output of the last forward pass. With `stop`, the
    forward pass stops (`StopForward`) once all are captured; run it as `try: model(x) except StopForward: pass`."""
    mods = {(l if isinstance(l, str) else layer_name(model, l)): get_layer(model, l) for l in layers}
    acts, hooks = {}, []
    def hook(name):
        def _h(m, i, o):
            acts[name] = o
            if stop and len(acts) == len(mods): raise StopForward()
        return _h
    try:
        for n, m in mods.items(): hooks.append(m.register_forward_hook(hook(n)))
        yield acts
    finally:
        for h in hooks: h.remove()


def _shape(o):
    if isinstance(o, torch.Tensor): return tuple(o.shape[1:])
    if isinstance(o, (tuple, list)) and o and isinstance(o[0], torch.Tensor): return tuple(o[0].shape[1:])
    return None


@patch
def layer_names(self: Learner, kind: str = 'conv',  # 'all', 'conv', 'linear', 'norm', 'act', 'leaf' or 'block'
                size=None):  # input size (px, or (h, w)) for the dry pass (default: the DataLoaders' item size)
    "Dotted names of the model's layers of `kind` -> output shape (C, H, W), from one dry forward pass."
    check_choice('kind', kind, list(LAYER_KINDS))
    check_image_size('size', size, allow_none=True)
    model = usable_model(self.model, 'learn.model')
    keep = {n: m for n, m in model.named_modules() if n and LAYER_KINDS[kind](m)}
    shapes, hooks = {}, []
    h, w = model_input_size(self, size)
    with preserve_model(model), torch.no_grad():
        model.eval()
        for n, m in keep.items():
            hooks.append(m.register_forward_hook(lambda mod, i, o, n=n: shapes.__setitem__(n, _shape(o))))
        model(torch.zeros(1, model_in_channels(model), h, w, device=model_device(model), dtype=model_dtype(model)))
    return {n: shapes.get(n) for n in keep}
