"Turn what a user hands in (path, PIL image, tensor, dataset item, ready batch) into a model input and a picture."
from __future__ import annotations
import itertools, warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from PIL import Image

from ..core import CnnTricksError, check_int, check_type, model_device, norm_stats

__all__ = ['image_batch', 'to_display', 'model_in_channels', 'first_conv']


def first_conv(model: nn.Module):
    "The first `Conv2d` of `model` (None when it has none)."
    return next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)


def model_in_channels(model: nn.Module, default=3) -> int:
    "How many channels the model's input has (from its first convolution)."
    conv = first_conv(model)
    return conv.in_channels if conv is not None else default


def model_dtype(model: nn.Module) -> torch.dtype:
    "The dtype of the model's first floating-point parameter (float32 for a model without one): inputs are built in it."
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def usable_model(model, name: str = 'model') -> nn.Module:
    "`model` if it is an `nn.Module` holding real values; a clear error for anything else or a meta-device model."
    check_type(name, model, nn.Module, 'a torch nn.Module')
    if any(t.is_meta for t in itertools.chain(model.parameters(), model.buffers())):
        raise CnnTricksError(f"{name} has tensors on the meta device (shapes without values), so it cannot be run; "
                             "materialize it first, e.g. model.to_empty(device='cpu') and then load_state_dict(...)")
    return model


def check_image_size(name: str, size, allow_none: bool = False, least: int = 1):
    "An image size: a whole number of px >= `least`, or an (h, w) pair of them; -> (h, w) (or None if allowed)."
    if size is None and allow_none: return None
    if isinstance(size, (tuple, list)):
        if len(size) != 2:
            raise CnnTricksError(f"{name}={size!r} is not valid; pass a whole number of px or an (h, w) pair of them")
        return tuple(check_int(name, s, lo=least) for s in size)
    n = check_int(name, size, lo=least)
    return n, n


def check_finite(name: str, x: torch.Tensor) -> torch.Tensor:
    "Raise if the tensor `x` holds NaN or inf values (every result computed from it would be NaN)."
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise CnnTricksError(f"{name} contains NaN or inf values; pass an image of finite values")
    return x


def check_stats(stats, channels: int = 3):
    "None, or a (mean, std) pair of finite tensors of 1 or `channels` values each (broadcastable to (1, C, 1, 1))."
    if stats is None: return None
    ok = (isinstance(stats, (tuple, list)) and len(stats) == 2 and all(isinstance(s, torch.Tensor) for s in stats))
    if not ok or any(s.numel() not in (1, channels) for s in stats):
        what = f"{[s.numel() for s in stats]} values" if ok else repr(stats)
        raise CnnTricksError(f"stats of {what} do not fit a {channels}-channel model; pass None or (mean, std) "
                             f"tensors of 1 or {channels} values, e.g. of shape (1, {channels}, 1, 1)")
    check_finite('stats', torch.cat([s.flatten().float() for s in stats]))
    if bool((stats[1] == 0).any()): raise CnnTricksError("stats has a std of 0; pass a positive std")
    return stats


def input_stats(learn, device, dtype=torch.float32):
    "The DataLoaders' (or timm's) normalization (mean, std) as (1, C, 1, 1) tensors, or None."
    stats = norm_stats(learn)
    if stats is None: return None
    return tuple(torch.tensor(s, device=device, dtype=dtype).view(1, -1, 1, 1) for s in stats)


def to_display(learn, xb: torch.Tensor) -> torch.Tensor:
    "Model-input batch -> images in [0, 1] on the CPU (undoing the DataLoaders' Normalize)."
    xb = xb.detach().float()
    stats = input_stats(learn, xb.device)
    if stats is not None and xb.shape[1] == stats[0].shape[1]: xb = xb * stats[1] + stats[0]
    return xb.clamp(0, 1).cpu()


def _hwc(a: np.ndarray) -> np.ndarray:
    "A 3-D array as HWC: channels-first (1, 3 or 4 leading channels) is transposed."
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4): a = a.transpose(1, 2, 0)
    return a[..., 0] if a.ndim == 3 and a.shape[-1] == 1 else a


def as_pil(img, name: str = 'img') -> Image.Image:
    """A 2-D/3-D array or tensor (HW, HWC or CHW with 1, 3 or 4 channels; uint8, or float in [0, 1]) as a PIL image.
    Four channels are read as RGBA."""
    a = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
    if a.dtype == bool or not (np.issubdtype(a.dtype, np.number)):
        raise CnnTricksError(f"{name} of dtype {a.dtype} is not an image; pass uint8 values or floats in [0, 1]")
    a = _hwc(a)
    if a.ndim == 3 and a.shape[-1] not in (3, 4):
        raise CnnTricksError(f"{name} of shape {tuple(img.shape)} is not an image; pass HW, HWC or CHW with 1, 3 or 4 "
                             "channels")
    if a.dtype != np.uint8:
        if not np.isfinite(a).all(): raise CnnTricksError(f"{name} contains NaN or inf values; pass finite values")
        if a.min() < -1e-3 or a.max() > 1 + 1e-3:
            raise CnnTricksError(f"a float image must have values in [0, 1]; got {name} in [{a.min():.3g}, "
                                 f"{a.max():.3g}]. Pass a 4-D tensor to use it as a ready (normalized) model input")
        a = (a * 255).round().astype(np.uint8)
    return Image.fromarray(a)


def _as_rgb(img: Image.Image, n_in: int) -> Image.Image:
    "An image with alpha (RGBA, LA) without it, for a 3-channel model: the alpha channel is dropped, as PIL does."
    return img.convert('RGB') if n_in == 3 and img.mode in ('RGBA', 'LA', 'PA') else img


def _ready_batch(img: torch.Tensor, n_in: int, name: str) -> torch.Tensor:
    "A 4-D tensor taken as a ready model input, with its channel count checked."
    if not img.is_floating_point():
        raise CnnTricksError(f"a 4-D tensor is taken as a ready model input and must be float; got {name} of "
                             f"{img.dtype}")
    if len(img) == 0: raise CnnTricksError(f"{name} is an empty batch (0 images)")
    check_finite(name, img)
    if img.shape[1] == 1 and n_in == 3:
        warnings.warn("1-channel input repeated to 3 channels for a 3-channel model")
        img = img.expand(-1, 3, -1, -1)
    if img.shape[1] != n_in:
        raise CnnTricksError(f"{name} has {img.shape[1]} channels but the model expects {n_in}")
    return img


def image_batch(learn, img, allow_batch=True, single: bool = False, name: str = 'img') -> torch.Tensor:
    """`img` as a model-input batch on the model's device, in the model's dtype (a half-precision model gets a half
    input): a path, PIL image, array, 3-D tensor or dataset item `(x, y)` goes through the DataLoaders' item and
    batch transforms (as `learn.predict` does); a 4-D tensor is taken as a ready model input (moved to the model's
    device). An RGBA image for a 3-channel model loses its alpha channel (as PIL's `convert('RGB')`). With `single`,
    a batch of more than one image is an error."""
    model = learn.model
    device, dtype, n_in = model_device(model), model_dtype(model), model_in_channels(model)
    if isinstance(img, tuple) and len(img) in (1, 2): img = img[0]  # a dataset item (x, y)
    if isinstance(img, torch.Tensor) and img.is_meta:
        raise CnnTricksError(f"{name} is a tensor on the meta device (a shape without values); pass real pixels")
    if isinstance(img, torch.Tensor) and img.dim() == 4 and allow_batch:
        if single and len(img) != 1:
            raise CnnTricksError(f"{name} is a batch of {len(img)} images; this method shows one: pass {name}[i:i+1]")
        return _ready_batch(img, n_in, name).to(device, dtype)
    if isinstance(img, (str, Path)):
        if not Path(img).is_file(): raise CnnTricksError(f"{name}={str(img)!r} is not an image file")
    elif isinstance(img, (torch.Tensor, np.ndarray)):
        if img.ndim not in (2, 3): raise CnnTricksError(f"an image tensor/array must be 2-D or 3-D; got {name} of "
                                                        f"shape {tuple(img.shape)}")
        img = _as_rgb(as_pil(img, name), n_in)
    elif isinstance(img, Image.Image): img = _as_rgb(img, n_in)
    else:
        raise CnnTricksError(f"{name} of type {type(img).__name__} is not an image; pass a path, PIL image, array, "
                             "tensor, dataset item or a 4-D model-input tensor")
    try: xb = learn.dls.test_dl([img]).one_batch()[0]
    except Exception as e:
        raise CnnTricksError(f"could not read {name} as an image through the DataLoaders: {e}") from e
    xb = torch.as_tensor(xb).as_subclass(torch.Tensor)
    if xb.shape[1] == 1 and n_in == 3:
        warnings.warn("1-channel image repeated to 3 channels for a 3-channel model")
        xb = xb.expand(-1, 3, -1, -1)
    if xb.shape[1] != n_in:
        raise CnnTricksError(f"{name} reaches the model with {xb.shape[1]} channels but the model expects {n_in}")
    return check_finite(name, xb.float()).to(device, dtype)
