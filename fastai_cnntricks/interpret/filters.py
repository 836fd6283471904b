"Looking at a convolution directly: its kernels, the maps it produces, and what classic kernels do to an image."
from __future__ import annotations
from pathlib import Path

import numpy as np
from PIL import Image

import torch
import torch.nn.functional as F
from torch import nn
from fastai.learner import Learner
from fastcore.basics import patch, patch_to

from ..core import CnnTricksError, check_bool, check_count, check_int, check_type, get_layer, layer_name, preserve_model
from .inputs import as_pil, check_finite, first_conv, image_batch, to_display, usable_model
from .layers import capture, StopForward, as_maps
from .plots import image_grid, finish, scale_each

__all__ = ['CLASSIC_KERNELS', 'kernel_effects', 'show_kernel_effects']

CLASSIC_KERNELS = {
    'identity': [[0, 0, 0], [0, 1, 0], [0, 0, 0]],
    'edges (Laplacian)': [[0, -1, 0], [-1, 4, -1], [0, -1, 0]],
    'vertical edges (Sobel x)': [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]],
    'horizontal edges (Sobel y)': [[-1, -2, -1], [0, 0, 0], [1, 2, 1]],
    'sharpen': [[0, -1, 0], [-1, 5, -1], [0, -1, 0]],
    'box blur': [[1 / 9] * 3] * 3,
    'Gaussian blur': [[1 / 16, 2 / 16, 1 / 16], [2 / 16, 4 / 16, 2 / 16], [1 / 16, 2 / 16, 1 / 16]],
}


@patch
def show_filters(self: Learner, layer=None,  # a Conv2d name or module (default: the first convolution)
                 max_n: int = 64,  # show at most this many filters
                 in_channel: int | None = None,  # deeper layers: this input channel (default: mean over inputs)
                 ncols: int = 8, show: bool = True):
    """The kernels of a convolution as a grid: RGB for a first layer with 3 input channels (each filter scaled to
    its own range), else one input channel (or the mean over input channels) as grayscale tiles. Depthwise and
    grouped convolutions show the kernel each output channel applies to its own group. Returns (kernels, Figure)."""
    check_count('max_n', max_n); check_int('in_channel', in_channel, lo=0, allow_none=True)
    check_count('ncols', ncols); check_bool('show', show)
    model = usable_model(self.model, 'learn.model')
    conv = first_conv(model) if layer is None else get_layer(model, layer)
    if not isinstance(conv, nn.modules.conv._ConvNd) or conv.weight.dim() != 4:
        raise CnnTricksError(f"layer {layer!r} is a {type(conv).__name__}, not a 2-D convolution; "
                             "see learn.layer_names('conv')")
    name = layer_name(model, conv)
    w = conv.weight.detach().float().cpu()[:max_n]  # (out, in/groups, kh, kw); a copy, the model is untouched
    per_group = w.shape[1]
    if per_group == 3 and in_channel is None:
        tiles, how = scale_each(w), 'RGB'
    else:
        if in_channel is not None and not 0 <= in_channel < per_group:
            raise CnnTricksError(f"in_channel={in_channel} is out of range; {name} has {per_group} input channel(s) "
                                 f"per group (valid: 0..{per_group - 1})")
        tiles = w[:, in_channel] if in_channel is not None else w.mean(1)
        tiles = scale_each(tiles)
        how = (f'input channel {in_channel}' if in_channel is not None else
               'depthwise' if per_group == 1 and conv.groups > 1 else
               'single input channel' if per_group == 1 else f'mean over {per_group} inputs')
        if conv.groups > 1 and per_group > 1: how += f', {conv.groups} groups'
    fig = image_grid(tiles, ncols=min(ncols, len(tiles)), size=0.9,
                     suptitle=f"{name}: {conv.out_channels} filters {tuple(w.shape[-2:])} ({how})")
    return tiles, finish(fig, show)


@patch
def show_feature_maps(self: Learner, img,  # a path, PIL image, tensor, dataset item or 4-D model input
                      layer,  # dotted name or module (see learn.layer_names())
                      max_n: int = 32,  # show at most this many channels
                      sort: bool = False,  # strongest channels (mean activation) first
                      ncols: int = 8, show: bool = True):
    "The activation maps of `layer` for one image, beside the input. Returns (maps (C, H, W), Figure)."
    check_count('max_n', max_n); check_bool('sort', sort); check_count('ncols', ncols); check_bool('show', show)
    model = usable_model(self.model, 'learn.model')
    mod = get_layer(model, layer)
    name = layer_name(model, mod)
    xb = image_batch(self, img, single=True)
    with preserve_model(model), torch.no_grad():
        model.eval()
        with capture(model, [mod]) as acts:
            try: model(xb)
            except StopForward: pass
        if name not in acts: raise CnnTricksError(f"layer {name!r} was not run by the model's forward pass")
        maps = as_maps(model, acts[name])[0].float().cpu()
    order = maps.mean((1, 2)).argsort(descending=True)[:max_n] if sort else torch.arange(min(max_n, len(maps)))
    tiles = [to_display(self, xb)[0]] + list(scale_each(maps[order]))
    titles = ['input'] + [f'ch {int(i)}' for i in order]
    fig = image_grid(tiles, titles, ncols=min(ncols, len(tiles)), size=1.1, cmap='viridis',
                     suptitle=f"{name}: {maps.shape[0]} maps of {tuple(maps.shape[1:])}")
    return maps, finish(fig, show)


def _kernel_stack(kernels) -> torch.Tensor:
    "`kernels` (a dict name -> 2-D kernel; None: the classic ones) checked and stacked as (K, 1, k, k) weights."
    kernels = CLASSIC_KERNELS if kernels is None else kernels
    if not isinstance(kernels, dict) or not kernels:
        raise CnnTricksError(f"kernels={kernels!r} is not valid; pass a non-empty dict name -> 2-D kernel (list or "
                             "tensor)")
    try: ks = [torch.as_tensor(k, dtype=torch.float32) for k in kernels.values()]
    except (TypeError, ValueError, RuntimeError): ks = None
    if ks is None or any(k.dim() != 2 or k.shape != ks[0].shape or k.shape[0] != k.shape[1] or k.shape[0] % 2 == 0
                         or not bool(torch.isfinite(k).all()) for k in ks):
        raise CnnTricksError("kernels must all be square 2-D arrays of finite numbers, of one odd size (e.g. 3x3)")
    return torch.stack(ks)[:, None]


def kernel_effects(img: torch.Tensor, kernels=None) -> torch.Tensor:
    "Grayscale version of `img` (C, H, W) in [0, 1] convolved with each kernel (same padding): (K, H, W)."
    check_type('img', img, torch.Tensor, 'a (C, H, W) image tensor')
    if img.dim() != 3: raise CnnTricksError(f"img of shape {tuple(img.shape)} is not valid; pass a (C, H, W) tensor")
    check_finite('img', img)
    weight = _kernel_stack(kernels)
    gray = img.float().mean(0, keepdim=True)[None]  # (1, 1, H, W)
    return F.conv2d(F.pad(gray, [weight.shape[-1] // 2] * 4, mode='replicate'), weight)[0]


def _chw01(img) -> torch.Tensor:
    "A path, PIL image, array or tensor as a (C, H, W) float tensor in [0, 1]."
    if isinstance(img, torch.Tensor) and img.dim() == 3 and img.is_floating_point() and img.shape[0] in (1, 3):
        return check_finite('img', img).float()
    if isinstance(img, (str, Path)):
        if not Path(img).is_file(): raise CnnTricksError(f"img={str(img)!r} is not an image file")
        img = Image.open(img)
    elif isinstance(img, (torch.Tensor, np.ndarray)):
        if img.ndim not in (2, 3): raise CnnTricksError(f"img of shape {tuple(img.shape)} is not an image; pass HW, "
                                                        "HWC or CHW")
        img = as_pil(img)
    elif not isinstance(img, Image.Image):
        raise CnnTricksError(f"img of type {type(img).__name__} is not an image; pass a (C, H, W) tensor in [0, 1], "
                             "a PIL image, an array or a path")
    return torch.from_numpy(np.asarray(img.convert('RGB'), dtype=np.float32) / 255.).permute(2, 0, 1)


def show_kernel_effects(img,  # a (C, H, W) tensor in [0, 1], PIL image, array or path (RGBA loses its alpha)
                        kernels=None,  # dict name -> 2-D kernel (default: identity, edges, sharpen, blur)
                        show: bool = True):
    "One image convolved with classic kernels: the teaching picture of what a convolution does. (outputs, Figure)"
    _kernel_stack(kernels); check_bool('show', show)
    x = _chw01(img)
    out = kernel_effects(x, kernels)
    names = list((CLASSIC_KERNELS if kernels is None else kernels).keys())
    fig = image_grid([x] + list(out), ['input'] + names, ncols=4, size=1.8)
    return out, finish(fig, show)


def _show_kernel_effects_as_seen(self: Learner, img,  # anything `show_feature_maps` takes: one image
                                 kernels=None, show: bool = True):
    "`show_kernel_effects` on `img` as the DataLoaders present it to the model."
    _kernel_stack(kernels); check_bool('show', show)
    return show_kernel_effects(to_display(self, image_batch(self, img, single=True))[0], kernels, show)


patch_to(Learner, nm='show_kernel_effects')(_show_kernel_effects_as_seen)
