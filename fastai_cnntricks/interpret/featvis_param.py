"""Feature visualization, idea 1 of 4: parameterization -- how the optimized image is represented.
FFT (a spectrum scaled by 1/f, so every frequency learns at a similar rate) or plain pixels; then Lucid's
decorrelated colour space and a sigmoid to valid RGB in [0, 1] (Olah et al., Distill 2017; Lucent's param/)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..core import CnnTricksError, check_choice, check_count
from .inputs import check_image_size

__all__ = ['COLOR_CORRELATION_SVD_SQRT', 'INIT_EPS', 'fft_image', 'pixel_image', 'to_valid_rgb', 'from_valid_rgb',
           'image_param']

# Square root of ImageNet's colour covariance (Lucid's color_correlation_svd_sqrt); columns normalized below.
COLOR_CORRELATION_SVD_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
_COLOR_NORMALIZED = COLOR_CORRELATION_SVD_SQRT / COLOR_CORRELATION_SVD_SQRT.norm(dim=0).max()


def fft_image(shape, sd=0.01, decay_power=1., generator=None, device='cpu', init=None):
    """An image (B, C, H, W) parameterized by its 2-D spectrum with 1/f^decay_power scaling; random, or the spectrum
    that renders `init` (B, C, H, W, before the sigmoid). -> (params, image_fn)"""
    b, c, h, w = shape
    freqs = (torch.fft.fftfreq(h)[:, None] ** 2 + torch.fft.rfftfreq(w)[None] ** 2).sqrt()
    scale = (1. / freqs.clamp_min(1. / max(h, w)) ** decay_power).to(device)[..., None]
    if init is None: spectrum = (torch.randn(b, c, *freqs.shape, 2, generator=generator) * sd).to(device)
    else:  # image() inverted: the real FFT of the image, times 4, unscaled
        spectrum = torch.view_as_real(torch.fft.rfftn(init.to(device) * 4., dim=(-2, -1), norm='ortho')) / scale
    spectrum = spectrum.contiguous().requires_grad_(True)
    def image():
        img = torch.fft.irfftn(torch.view_as_complex(scale * spectrum), s=(h, w), norm='ortho')
        return img / 4.  # Lucid's "magic" factor keeps the initial image in the sigmoid's linear range
    return [spectrum], image


def pixel_image(shape, sd=0.01, generator=None, device='cpu', init=None):
    "An image (B, C, H, W) parameterized by its pixels: random, or `init` (before the sigmoid). -> (params, image_fn)"
    pixels = (torch.randn(*shape, generator=generator) * sd if init is None else init.clone()).to(device)
    pixels.requires_grad_(True)
    return [pixels], lambda: pixels


def to_valid_rgb(image_fn, decorrelate=True):
    "Wrap `image_fn` so it returns valid RGB in [0, 1]: optional colour decorrelation, then a sigmoid."
    def image():
        img = image_fn()
        if decorrelate:
            # a 1x1 convolution: the same colour matrix product, far faster than einsum's bmm on CPU
            img = F.conv2d(img, _COLOR_NORMALIZED.to(img.device, img.dtype)[:, :, None, None])
        return torch.sigmoid(img)
    return image


INIT_EPS = 0.01  # a starting image's pixels are kept this far from 0 and 1, off the sigmoid's flat ends, to move


def from_valid_rgb(img: torch.Tensor, decorrelate=True) -> torch.Tensor:
    "`to_valid_rgb` inverted: images in [0, 1] -> what the parameterization must render (to within `INIT_EPS`)."
    x = torch.logit(img.float().clamp(INIT_EPS, 1 - INIT_EPS))
    if decorrelate: x = F.conv2d(x, torch.linalg.inv(_COLOR_NORMALIZED).to(x.device)[:, :, None, None])
    return x


MIN_SIZE = 8  # px: the smallest image the parameterizations and transforms make sense for


def check_param(param) -> str:
    "`param` if it names a parameterization ('fft' or 'pixel')."
    return check_choice('param', param, ['fft', 'pixel'])


def image_param(n: int, size, param='fft', decorrelate=True, sd=0.01, generator=None, device='cpu', *, channels=3,
                init=None):
    """`n` images of `channels` channels and `size` px (or (h, w), at least `MIN_SIZE`) parameterized by `param`
    ('fft' or 'pixel'), starting from random noise or from `init` ((1 or n, channels, h, w) in [0, 1]). Colour
    decorrelation is an RGB matrix: it needs 3 channels. -> (params, image_fn in [0, 1])"""
    check_count('n', n); check_param(param); check_count('channels', channels)
    h, w = check_image_size('size', size, least=MIN_SIZE)
    if decorrelate and channels != 3:
        raise CnnTricksError(f"decorrelate=True mixes RGB colours; with channels={channels} pass decorrelate=False")
    if init is not None:
        if init.dim() != 4 or len(init) not in (1, n) or tuple(init.shape[1:]) != (channels, h, w):
            raise CnnTricksError(f"init of shape {tuple(init.shape)} is not valid; pass images (1 or {n}, "
                                 f"{channels}, {h}, {w}) in [0, 1]")
        init = from_valid_rgb(init, decorrelate).expand(n, -1, -1, -1)
    make = fft_image if param == 'fft' else pixel_image
    params, fn = make((n, channels, h, w), sd=sd, generator=generator, device=device, init=init)
    return params, to_valid_rgb(fn, decorrelate)
