"The demo report's 'augmentation' section: the Keras-parity pipeline on sample images, as HTML."
from __future__ import annotations

import html

from ..report import fig_html

__all__ = ['augmentation_tfms', 'augmentation_section']


def augmentation_tfms():
    "The demo pipeline: Keras' usual ImageDataGenerator arguments plus noise, fused into one affine pass."
    from .keras import keras_tfms
    from .pixel import GaussianNoise
    from .geometric import fuse_tfms
    kt = keras_tfms(rotation_range=15, width_shift_range=0.1, height_shift_range=0.1, shear_range=10,
                    zoom_range=0.15, horizontal_flip=True, brightness_range=(0.7, 1.3), channel_shift_range=20,
                    fill_mode='reflect')
    return fuse_tfms(kt.batch_tfms + [GaussianNoise(0.03, p=0.5)])


def augmentation_section(images=None, tfms=None, n=11, seed=0) -> str:
    """HTML for the report's augmentation section: `images` (an image, a batch or DataLoaders; default
    scikit-learn's sample photo 'flower.jpg' at 128 px) under `tfms` (default `augmentation_tfms()`), one base64
    PNG grid plus the list of transforms."""
    from .show import show_augmented
    if images is None:
        import torch
        from sklearn.datasets import load_sample_image
        from torch.nn.functional import interpolate
        img = torch.tensor(load_sample_image('flower.jpg')).permute(2, 0, 1)[None].float()
        images = interpolate(img / 255, size=(128, 170), mode='area')[0]
    tfms = augmentation_tfms() if tfms is None else list(tfms)
    fig = show_augmented(images, tfms, n=n, ncols=6, seed=seed)
    items = ''.join(f'<li><code>{html.escape(repr(t))[:300]}</code></li>' for t in tfms)
    return ('<section id="augmentation"><h2>Augmentation</h2>'
            '<p>The training pipeline on a sample image (first: the original). All geometric transforms are '
            'multiplied into one matrix per image and resampled by a single <code>grid_sample</code>; pixel '
            'transforms are one batched pass each.</p>'
            f'{fig_html(fig, "augmented samples", dpi=72)}'
            f'<details><summary>Transforms</summary><ul>{items}</ul></details></section>')
