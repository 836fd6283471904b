"The report's augmentation section: a training pipeline on sample images."
from __future__ import annotations
import html

from ..core import check_count, check_seed, check_type
from ..augment import keras_tfms, GaussianNoise, fuse_tfms, show_augmented
from .page import fig_html, section

__all__ = ['augmentation_tfms', 'augmentation_section']


def augmentation_tfms():
    "The report's default pipeline: Keras' usual ImageDataGenerator arguments plus noise, fused into one affine pass."
    kt = keras_tfms(rotation_range=15, width_shift_range=0.1, height_shift_range=0.1, shear_range=10,
                    zoom_range=0.15, horizontal_flip=True, brightness_range=(0.7, 1.3), channel_shift_range=20,
                    fill_mode='reflect')
    return fuse_tfms(kt.batch_tfms + [GaussianNoise(0.03, p=0.5)])


def _sample_photo():
    "scikit-learn's sample photo 'flower.jpg' at 128 px high, floats in [0, 1]."
    import torch
    from sklearn.datasets import load_sample_image
    from torch.nn.functional import interpolate
    img = torch.tensor(load_sample_image('flower.jpg')).permute(2, 0, 1)[None].float()
    return interpolate(img / 255, size=(128, 170), mode='area')[0]


def augmentation_section(images=None,  # an image, a batch or DataLoaders (default: scikit-learn's 'flower.jpg')
                         tfms=None,  # batch transforms (default `augmentation_tfms()`)
                         n=11,  # random draws of a single image
                         seed=0,  # seed of the draws
                         descriptions=None) -> str:  # one line per transform (default: their class names)
    "`images` under `tfms` as one PNG grid, with the list of transforms."
    check_count('n', n)
    check_seed('seed', seed)
    if descriptions is not None: check_type('descriptions', descriptions, (list, tuple), 'a list of strings')
    images = _sample_photo() if images is None else images
    tfms = augmentation_tfms() if tfms is None else list(tfms)
    fig = show_augmented(images, tfms, n=n, ncols=6, seed=seed)
    if descriptions is None: descriptions = [type(t).__name__ for t in tfms]
    items = ''.join(f'<li>{html.escape(str(d))}</li>' for d in descriptions)
    body = ('<p>The training pipeline on a sample image (first: the original). All geometric transforms are '
            'multiplied into one matrix per image and resampled by a single <code>grid_sample</code>; pixel '
            'transforms are one batched pass each.</p>'
            f'{fig_html(fig, "augmented samples", dpi=72)}'
            f'<details><summary>Transforms</summary><ul>{items or "<li>none</li>"}</ul></details>')
    return section('Augmentation', body, id='augmentation')
