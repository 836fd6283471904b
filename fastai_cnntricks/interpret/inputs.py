"Turn what a user hands in (path, PIL image, tensor, dataset item, ready batch) into a model input and a picture."
from __future__ import annotations
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from PIL import Image

from ..core import CnnTricksError, model_device, norm_stats

__all__ = ['image_batch', 'to_display', 'model_in_channels', 'first_conv']


def first_conv(model: nn.Module):
    "The first `Conv2d` of `model` (None when it has none)."
    return next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)


def model_in_channels(model: nn.Module, default=3) -> int:
    "How many channels the model's input has (from its first convolution)."
    conv = first_conv(model)
    return conv.in_channels if conv is not None else default


def _stats(learn, device, dtype=torch.float32):
    stats = norm_stats(learn)
    if stats is None: return None
    return tuple(torch.tensor(s, device=device, dtype=dtype).view(1, -1, 1, 1) for s in stats)


def to_display(learn, xb: torch.Tensor) -> torch.Tensor:
    "Model-input batch -> images in [0, 1] on the CPU (undoing the DataLoaders' Normalize)."
    xb = xb.detach().float()
    stats = _stats(learn, xb.device)
    if stats is not None and xb.shape[1] == stats[0].shape[1]: xb = xb * stats[1] + stats[0]
    return xb.clamp(0, 1).cpu()


def _as_pil(img):
    "A 2-D/3-D array or tensor (HW, HWC or CHW; uint8 or float in [0, 1]) as a PIL image."
    a = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3): a = a.transpose(1, 2, 0)
    if a.ndim == 3 and a.shape[-1] == 1: a = a[..., 0]
    if a.dtype != np.uint8:
        if a.min() < -1e-3 or a.max() > 1 + 1e-3:
            raise CnnTricksError(f"a float image must have values in [0, 1]; got [{a.min():.3g}, {a.max():.3g}]. "
                                 "Pass a 4-D tensor to use it as a ready (normalized) model input")
        a = (a * 255).round().astype(np.uint8)
    return Image.fromarray(a)


def image_batch(learn, img, allow_batch=True) -> torch.Tensor:
    """`img` as a model-input batch on the model's device: a path, PIL image, array, 3-D tensor or dataset item
    goes through the DataLoaders' item and batch transforms (as `learn.predict` does); a 4-D tensor is taken as
    a ready model input."""
    model = learn.model
    device, n_in = model_device(model), model_in_channels(model)
    if isinstance(img, (tuple, list)) and len(img) >= 1 and not isinstance(img[0], (int, float)):
        img = img[0]  # a dataset item (x, y)
    if isinstance(img, torch.Tensor) and img.dim() == 4 and allow_batch:
        if not img.is_floating_point():
            raise CnnTricksError(f"a 4-D tensor is taken as a ready model input and must be float; got {img.dtype}")
        if img.shape[1] == 1 and n_in == 3:
            warnings.warn("1-channel input repeated to 3 channels for a 3-channel model")
            img = img.expand(-1, 3, -1, -1)
        if img.shape[1] != n_in:
            raise CnnTricksError(f"the input has {img.shape[1]} channels but the model expects {n_in}")
        return img.to(device)
    if isinstance(img, (str, Path)):
        if not Path(img).is_file(): raise CnnTricksError(f"img={str(img)!r} is not an image file")
    elif isinstance(img, (torch.Tensor, np.ndarray)):
        if img.ndim not in (2, 3): raise CnnTricksError(f"an image tensor/array must be 2-D or 3-D; got shape "
                                                        f"{tuple(img.shape)}")
        img = _as_pil(img)
    elif not isinstance(img, Image.Image):
        raise CnnTricksError(f"img of type {type(img).__name__} is not an image; pass a path, PIL image, array, "
                             "tensor, dataset item or a 4-D model-input tensor")
    try: xb = learn.dls.test_dl([img]).one_batch()[0]
    except Exception as e:
        raise CnnTricksError(f"could not read img as an image through the DataLoaders: {e}") from e
    if xb.shape[1] == 1 and n_in == 3:
        warnings.warn("1-channel image repeated to 3 channels for a 3-channel model")
        xb = xb.expand(-1, 3, -1, -1)
    return torch.as_tensor(xb).as_subclass(torch.Tensor).float().to(device)
