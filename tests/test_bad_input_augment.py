"""Bad input to every public augment function and transform: a `CnnTricksError` (a TypeError for an unknown keyword
argument) whose message names the argument, raised when the transform is built, before any batch."""
import math

import pytest
import torch
from fastai.vision.all import TensorImage

from fastai_cnntricks.core import CnnTricksError
from fastai_cnntricks.augment import *

nan, inf = math.nan, math.inf
X = TensorImage(torch.rand(2, 3, 8, 8))
MAT = torch.eye(3).expand(2, 3, 3)

CASES = [  # (argument named in the message, call)
    ('max_deg', lambda: Shear(max_deg=nan)), ('max_deg', lambda: Shear(max_deg=inf)), ('max_deg', lambda: Shear(-1)),
    ('max_deg', lambda: Shear(True)), ('max_deg', lambda: Shear(90)), ('p', lambda: Shear(p=1.5)),
    ('p', lambda: Shear(p=nan)), ('draw', lambda: Shear(draw=nan)), ('draw', lambda: Shear(draw='x')),
    ('keras', lambda: Shear(keras='yes')), ('batch', lambda: Shear(batch=1)),
    ('size', lambda: Shear(size=inf)), ('size', lambda: Shear(size=0)), ('size', lambda: Shear(size=(8, 8, 8))),
    ('size', lambda: Shear(size=True)), ('mode', lambda: Shear(mode='cubic')), ('fill_mode', lambda: Shear(fill_mode='mirror')),
    ('cval', lambda: Shear(cval=nan)), ('cval', lambda: Shear(cval='0')), ('align_corners', lambda: Shear(align_corners=None)),
    ('width', lambda: Shift(width=-.1)), ('width', lambda: Shift(width=nan)), ('width', lambda: Shift(width=[])),
    ('width', lambda: Shift(width=[1, nan])), ('height', lambda: Shift(height=inf)), ('height', lambda: Shift(height=False)),
    ('draw_x', lambda: Shift(draw_x=inf)), ('draw_y', lambda: Shift(draw_y=[nan])),
    ('min_zoom', lambda: ZoomXY(0, 1)), ('min_zoom', lambda: ZoomXY(nan, 1)), ('max_zoom', lambda: ZoomXY(1, inf)),
    ('min_zoom', lambda: ZoomXY(1.2, 1.1)), ('keras', lambda: ZoomXY(keras=None)),
    ('p', lambda: FlipVertical(p=-.1)), ('draw', lambda: FlipVertical(draw=inf)),
    ('max_shift', lambda: ChannelShift(-1)), ('max_shift', lambda: ChannelShift(nan)), ('p', lambda: ChannelShift(p=2)),
    ('batch', lambda: ChannelShift(batch='no')), ('min_factor', lambda: BrightnessFactor(1.2, .8)),
    ('min_factor', lambda: BrightnessFactor(nan, 1)), ('max_factor', lambda: BrightnessFactor(.5, inf)),
    ('max_value', lambda: BrightnessFactor(max_value=0)), ('std', lambda: GaussianNoise(-1)), ('std', lambda: GaussianNoise(inf)),
    ('amount', lambda: SaltPepper(1.5)), ('salt_vs_pepper', lambda: SaltPepper(salt_vs_pepper=nan)),
    ('high', lambda: SaltPepper(high=inf)), ('sigma', lambda: GaussianBlur(sigma=(0, inf))),
    ('sigma', lambda: GaussianBlur(sigma=(2, 1))), ('sigma', lambda: GaussianBlur(sigma=1.)),
    ('size', lambda: Cutout(size=(.1, 2))), ('n_holes', lambda: Cutout(n_holes=0)), ('n_holes', lambda: Cutout(n_holes=2.5)),
    ('fill', lambda: Cutout(fill=nan)), ('tfms', lambda: PixelChain([Shear()])), ('tfms', lambda: PixelChain([])),
    ('fill_mode', lambda: AffineFill(fill_mode='mirror')), ('mode_mask', lambda: AffineFill(mode_mask='bicubic')),
    ('tfms', lambda: fuse_tfms(['Shear'])), ('tfms', lambda: fuse_tfms([Shear(), 3])), ('tfms', lambda: fuse_tfms([{'p': 1}])),
    ('tfms', lambda: fuse_tfms('Shear')), ('fill_mode', lambda: fuse_tfms([Shear()], fill_mode='mirror')),
    ('cval', lambda: fuse_tfms([Shear()], cval=inf)), ('size', lambda: fuse_tfms([Shear()], size=-3)),
    ('align_corners', lambda: fuse_tfms([Shear()], align_corners=1)), ('mode', lambda: fuse_tfms([Shear()], mode='area')),
    ('size', lambda: apply_affine(X, MAT, size=inf)), ('fill_mode', lambda: apply_affine(X, MAT, fill_mode='x')),
    ('mode', lambda: apply_affine(X, MAT, mode='cubic')), ('cval', lambda: apply_affine(X, MAT, cval=nan)),
    ('func', lambda: Preprocess(None)), ('per_image', lambda: Preprocess(abs, per_image='yes')),
    ('scale', lambda: Preprocess(abs, scale=nan)), ('scale', lambda: Rescale(0)), ('scale', lambda: Rescale(inf)),
    ('scale', lambda: Rescale(True)), ('center', lambda: SamplewiseNormalize(center=1)), ('eps', lambda: SamplewiseNormalize(eps=-1)),
    ('std', lambda: FeaturewiseNormalize(std='yes')), ('max_batches', lambda: FeaturewiseNormalize(max_batches=0)),
    ('mean', lambda: FeaturewiseNormalize(mean=[nan, 0, 0])), ('progress', lambda: FeaturewiseNormalize(progress=None)),
    ('eps', lambda: ZCAWhiten(eps=nan)), ('eps', lambda: ZCAWhiten(eps=-1)), ('data_scale', lambda: ZCAWhiten(data_scale=0)),
    ('max_dim', lambda: ZCAWhiten(max_dim=2.5)), ('max_batches', lambda: list(training_images(X, max_batches=-1))),
    ('validation_split', lambda: KerasSplitter(1.)), ('validation_split', lambda: KerasSplitter(nan)),
    ('n', lambda: show_augmented(X[0], [Shear()], n=0)), ('n', lambda: show_augmented(X[0], [Shear()], n=2.5)),
    ('ncols', lambda: show_augmented(X[0], [Shear()], ncols=-1)), ('seed', lambda: show_augmented(X[0], [Shear()], seed='x')),
    ('seed', lambda: show_augmented(X[0], [Shear()], seed=2 ** 70)), ('tfms', lambda: show_augmented(X[0], ['Shear'])),
    ('figsize', lambda: show_augmented(X[0], [Shear()], figsize=(0, 3))), ('titles', lambda: show_augmented(X[0], [], titles=None)),
    ('x', lambda: show_augmented(torch.rand(4, 8, 8), [Shear()])), ('x', lambda: show_augmented('photo.jpg', [Shear()])),
]
KERAS_CASES = [
    ('rotation_range', dict(rotation_range=nan)), ('rotation_range', dict(rotation_range=-5)),
    ('rotation_range', dict(rotation_range=True)), ('width_shift_range', dict(width_shift_range=inf)),
    ('width_shift_range', dict(width_shift_range=-.1)), ('height_shift_range', dict(height_shift_range=[0.1, nan])),
    ('height_shift_range', dict(height_shift_range='0.1')), ('shear_range', dict(shear_range=nan)),
    ('shear_range', dict(shear_range=90)), ('zoom_range', dict(zoom_range=1.5)), ('zoom_range', dict(zoom_range=[1.2, .8])),
    ('zoom_range', dict(zoom_range=[0, inf])), ('zoom_range', dict(zoom_range=(1,))),
    ('channel_shift_range', dict(channel_shift_range=-1)), ('brightness_range', dict(brightness_range=.2)),
    ('brightness_range', dict(brightness_range=(1.2, .8))), ('brightness_range', dict(brightness_range=(nan, 1))),
    ('fill_mode', dict(fill_mode='reflection')), ('cval', dict(cval=nan)), ('cval', dict(cval='white')),
    ('horizontal_flip', dict(horizontal_flip='yes')), ('vertical_flip', dict(vertical_flip=1)),
    ('featurewise_center', dict(featurewise_center=None)), ('zca_whitening', dict(zca_whitening='True')),
    ('zca_epsilon', dict(zca_epsilon=-1e-6)), ('zca_epsilon', dict(zca_epsilon=nan)), ('rescale', dict(rescale=inf)),
    ('rescale', dict(rescale='1/255')), ('preprocessing_function', dict(preprocessing_function='abs')),
    ('validation_split', dict(validation_split=1.)), ('validation_split', dict(validation_split=-.2)),
    ('validation_split', dict(validation_split=nan)), ('interpolation_order', dict(interpolation_order=2)),
    ('interpolation_order', dict(interpolation_order=1.5)), ('interpolation_order', dict(interpolation_order=7)),
    ('data_format', dict(data_format='nhwc')), ('dtype', dict(dtype='float99')),
]


@pytest.mark.parametrize('arg,call', CASES, ids=[f"{i}-{a}" for i, (a, _) in enumerate(CASES)])
def test_bad_argument_names_it(arg, call):
    with pytest.raises(CnnTricksError) as e: call()
    assert arg in str(e.value)


@pytest.mark.parametrize('arg,kwargs', KERAS_CASES, ids=[f"{a}={v!r}" for a, d in KERAS_CASES for v in d.values()])
def test_keras_tfms_bad_argument_names_it(arg, kwargs):
    with pytest.raises(CnnTricksError) as e: keras_tfms(**kwargs)
    assert arg in str(e.value)


def test_unknown_keyword_is_a_type_error_naming_it():
    with pytest.raises(TypeError, match='rotation'): keras_tfms(rotation=10)
    with pytest.raises(TypeError, match='max_degree'): Shear(max_degree=10)


def test_edge_values_that_are_valid():
    "Zero ranges, p in {0, 1}, lists of draws, Keras' falsy rescale and interpolation orders 0/1/3 are accepted."
    for t in (Shear(0, p=0.), Shift(0, [0.1, 0.2], p=1.), ZoomXY(1, 1), ChannelShift(0), GaussianBlur((0, 0)),
              Cutout((0, 1)), BrightnessFactor(1, 1, max_value=None)):
        assert t(X, split_idx=0).shape == X.shape
    for order in (0, 1, 3): keras_tfms(rotation_range=10, interpolation_order=order)
    assert keras_tfms(rescale=0).batch_tfms == [] and keras_tfms(validation_split=0).get('splitter') is None
