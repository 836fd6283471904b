"""Feature visualization, idea 1 of 4: parameterization -- how the optimized image is represented.
FFT (a spectrum scaled by 1/f, so every frequency learns at a similar rate) or plain pixels; then Lucid's
decorrelated colour space and a sigmoid to valid RGB in [0, 1] (Olah et al., Distill 2017; Lucent's param/)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..core import check_choice, check_count
from .inputs import check_image_size

__all__ = ['COLOR_CORRELATION_SVD_SQRT', 'fft_image', 'pixel_image', 'to_valid_rgb', 'image_param']

# Square root of ImageNet's colour covariance (Lucid's color_correlation_svd_sqrt); columns normalized below.
COLOR_CORRELATION_SVD_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
_COLOR_NORMALIZED = COLOR_CORRELATION_SVD_SQRT / COLOR_CORRELATION_SVD_SQRT.norm(dim=0).max()


def fft_image(shape, sd=0.01, decay_power=1., generator=None, device='cpu'):
    "An image (B, C, H, W) parameterized by its 2-D spectrum with 1/f^decay_power scaling. -> (params, image_fn)"
    b, c, h, w = shape
    freqs = (torch.fft.fftfreq(h)[:, None] ** 2 + torch.fft.rfftfreq(w)[None] ** 2).sqrt()
    scale = (1. / freqs.clamp_min(1. / max(h, w)) ** decay_power).to(device)[..., None]
    spectrum = (torch.randn(b, c, *freqs.shape, 2, generator=generator) * sd).to(device).requires_grad_(True)
    def image():
        img = torch.fft.irfftn(torch.view_as_complex(scale * spectrum), s=(h, w), norm='ortho')
        return img / 4.  # Lucid's "magic" factor keeps the initial image in the sigmoid's linear range
    return [spectrum], image


def pixel_image(shape, sd=0.01, generator=None, device='cpu'):
    "An image (B, C, H, W) parameterized directly by its pixels. -> (params, image_fn)"
    pixels = (torch.randn(*shape, generator=generator) * sd).to(device).requires_grad_(True)
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


MIN_SIZE = 8  # px: the smallest image the parameterizations and transforms make sense for


def check_param(param) -> str:
    "`param` if it names a parameterization ('fft' or 'pixel')."
    return check_choice('param', param, ['fft', 'pixel'])


def image_param(n: int, size, param='fft', decorrelate=True, sd=0.01, generator=None, device='cpu'):
    """`n` RGB images of `size` px (or (h, w), at least `MIN_SIZE`) parameterized by `param` ('fft' or 'pixel').
    -> (params, image_fn in [0, 1])"""
    check_count('n', n); check_param(param)
    h, w = check_image_size('size', size, least=MIN_SIZE)
    make = fft_image if param == 'fft' else pixel_image
    params, fn = make((n, 3, h, w), sd=sd, generator=generator, device=device)
    return params, to_valid_rgb(fn, decorrelate)
