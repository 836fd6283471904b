"""`keras_tfms` against Keras 3's own legacy `ImageDataGenerator` (torch backend, scipy; no TensorFlow) on a real photo
that is not square (scikit-learn's china.jpg at 96x128).

Deterministic cases go through Keras' `apply_transform(x, params)` and `standardize`, random ranges through
`get_random_transform` (a few thousand draws each). Agreement is interpolation-level (mean absolute difference < 2
in 0..255 units) away from the conventions documented in `fastai_cnntricks.augment.keras`: Keras 3 swaps the axes
of shifts, turns about an off-centre point on non-square images, turns by the opposite sign and wraps every n-1
pixels. `keras_params` states those conventions as code: it gives the Keras parameters whose result is the
project's geometry, and the raw cases check that Keras really departs from it there.
"""
import math
import os

os.environ['KERAS_BACKEND'] = 'torch'  # before keras is imported anywhere
import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats
from keras.src.legacy.preprocessing.image import ImageDataGenerator
from sklearn.datasets import load_sample_image
from fastai.vision.all import TensorImage, Pipeline, Rotate, Flip

from fastai_cnntricks.core import CnnTricksError
from fastai_cnntricks.augment import (Shift, Shear, ZoomXY, FlipVertical, ChannelShift, BrightnessFactor, ZCAWhiten,
                                      FeaturewiseNormalize, fuse_tfms, keras_tfms)

PHOTO = np.asarray(Image.fromarray(load_sample_image('china.jpg')).resize((128, 96), Image.BILINEAR), np.float32)
H, W = PHOTO.shape[:2]
N_DRAWS = 4000


def mad(a, b): return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).mean())


def keras(params, x=PHOTO, **kwargs):
    "Keras 3's own result: `apply_transform` of one HWC image in 0..255 (fill 'nearest' unless given)."
    return ImageDataGenerator(**{'fill_mode': 'nearest', **kwargs}).apply_transform(x.copy(), params)


def ours(tfms, x=PHOTO, fill_mode='nearest', cval=0., mode=None):
    "The project's result for fixed-draw transforms, fused as keras_tfms fuses them, back in HWC 0..255."
    xb = TensorImage(torch.from_numpy(x).permute(2, 0, 1)[None] / 255)
    pipe = Pipeline(fuse_tfms(tfms, fill_mode=fill_mode, cval=cval / 255, align_corners=False, mode=mode), split_idx=0)
    return pipe(xb)[0].permute(1, 2, 0).numpy() * 255


def keras_params(degrees=0., dx=0., dy=0., shear=0., zx=1., zy=1., h=H, w=W):
    """The Keras 3 parameters that give the project's geometry: fastai's rotation by `degrees` is Keras' theta =
    -degrees; content moved right/down by (dx, dy) is Keras' (tx, ty) = (-dx, -dy) (Keras 3 applies tx to the columns:
    keras-team/keras#17398); plus the shift that moves Keras' off-centre turning point (h/2 - .5, w/2 - .5), taken as
    (x, y), back to the image centre."""
    th, s = math.radians(-degrees), math.radians(shear)
    rot = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    lin = rot @ np.array([[1, -math.sin(s)], [0, math.cos(s)]]) @ np.diag([zx, zy])
    centre, keras_centre = np.array([(w - 1) / 2, (h - 1) / 2]), np.array([h / 2 - .5, w / 2 - .5])
    tx, ty = np.array([-dx, -dy]) + np.linalg.solve(rot, (np.eye(2) - lin) @ (centre - keras_centre))
    return dict(theta=-degrees, tx=tx, ty=ty, shear=shear, zx=zx, zy=zy)


def rotate(d): return Rotate(max_deg=90, p=1., draw=float(d))
def shift(dx, dy): return Shift(1, 1, p=1., draw_x=float(dx), draw_y=float(dy))
def shear(a): return Shear(89, p=1., draw=float(a), keras=True)
def zoom(zx, zy): return ZoomXY(.1, 10, p=1., draw_x=zx, draw_y=zy, keras=True)


GEOMETRIC = {  # name: (project transforms, the Keras parameters of the same geometry)
    'rotation 20': ([rotate(20)], keras_params(20)),
    'rotation -35': ([rotate(-35)], keras_params(-35)),
    'shift right 10': ([shift(10, 0)], keras_params(dx=10)),
    'shift left 10': ([shift(-10, 0)], keras_params(dx=-10)),
    'shift down 7.5': ([shift(0, 7.5)], keras_params(dy=7.5)),
    'shift up 7.5': ([shift(0, -7.5)], keras_params(dy=-7.5)),
    'shear 15': ([shear(15)], keras_params(shear=15)),
    'shear -25': ([shear(-25)], keras_params(shear=-25)),
    'zoom x 1.3 y 0.8': ([zoom(1.3, .8)], keras_params(zx=1.3, zy=.8)),
    'horizontal flip': ([Flip(p=1.)], dict(flip_horizontal=True)),
    'vertical flip': ([FlipVertical(p=1.)], dict(flip_vertical=True)),
    'rotation 20 + shift (12, -6)': ([rotate(20), shift(12, -6)], keras_params(20, 12, -6)),
    'shift (-9, 5) + shear 10': ([shift(-9, 5), shear(10)], keras_params(dx=-9, dy=5, shear=10)),
    'all geometric + flips': ([rotate(15), shift(12, -6), shear(10), zoom(1.1, .9), Flip(p=1.), FlipVertical(p=1.)],
                              {**keras_params(15, 12, -6, 10, 1.1, .9), 'flip_horizontal': True, 'flip_vertical': True}),
}


@pytest.mark.parametrize('case', GEOMETRIC, ids=str)
def test_geometric_case_matches_keras(case):
    tfms, params = GEOMETRIC[case]
    assert mad(ours(tfms), keras(params)) < 2


def test_keras_conventions_are_real_departures():
    "Where keras_params departs from the raw parameters, Keras 3 really does something else (so the conventions matter)."
    assert mad(ours([rotate(20)]), keras(dict(theta=-20))) > 10  # off-centre turning point on 96x128
    assert mad(ours([rotate(20)]), keras(keras_params(-20))) > 10  # the sign: Keras' theta is fastai's -degrees
    # Keras 3's width shift (ty) moves the content vertically; the documented, horizontal meaning is the project's
    assert mad(ours([shift(10, 0)]), keras(dict(ty=-10))) > 10
    assert mad(ours([shift(0, 10)]), keras(dict(ty=-10))) < 2
    # on a square image the turning point is the centre: Keras' own rotation and shear equal ours with no correction
    sq = np.ascontiguousarray(PHOTO[:, :96])
    assert mad(ours([rotate(20), shear(10)], x=sq), keras(dict(theta=-20, shear=10), x=sq)) < 2


@pytest.mark.parametrize('fill_mode', ['constant', 'nearest', 'reflect', 'wrap'])
def test_fill_modes_with_the_border_exposed(fill_mode):
    "A 30 x 20 px shift and a 25 degree turn expose the border: each fill mode as Keras fills it (wrap: period n)."
    for tfms, params in (([shift(30, 20)], keras_params(dx=30, dy=20)), ([rotate(25)], keras_params(25))):
        y = ours(tfms, fill_mode=fill_mode, cval=100.)
        if fill_mode == 'wrap':  # scipy's 'wrap' repeats every n-1 pixels; 'grid-wrap' every n, as the project
            assert mad(y, keras(params, fill_mode='grid-wrap')) < 2
            assert mad(y, keras(params, fill_mode='wrap')) > mad(y, keras(params, fill_mode='grid-wrap')) + 1
        else: assert mad(y, keras(params, fill_mode=fill_mode, cval=100.)) < 2


def test_interpolation_order():
    "interpolation_order 0, 1 and 3 are grid_sample's nearest, bilinear and bicubic; 2, 4 and 5 have no equivalent."
    for order, mode in ((0, 'nearest'), (1, 'bilinear'), (3, 'bicubic')):
        kt = keras_tfms(rotation_range=30, interpolation_order=order)
        assert kt.batch_tfms[0].mode == mode
        assert mad(ours([rotate(20)], mode=mode), keras(keras_params(20), interpolation_order=order)) < 2
    with pytest.raises(CnnTricksError, match='interpolation_order'): keras_tfms(interpolation_order=2)


def _photo_batch(x=PHOTO): return TensorImage(torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1)[None] / 255)


def test_channel_shift_and_brightness():
    for s in (40., -55.):
        y = ChannelShift(1., p=1.).apply_fixed(_photo_batch(), s / 255)[0].permute(1, 2, 0).numpy() * 255
        assert mad(y, keras(dict(channel_shift_intensity=s))) < 2
    for b in (.6, 1.4):  # Keras goes through 8-bit PIL: rounding only
        y = BrightnessFactor(0, 2, p=1.).apply_fixed(_photo_batch(), b)[0].permute(1, 2, 0).numpy() * 255
        assert mad(y, keras(dict(brightness=b))) < 1


def _keras_tfms_output(kwargs, x):
    "keras_tfms' batch transforms (fitted on `x`, NHWC 0..255 as Keras takes it) applied to `x`, back as NHWC."
    xb = TensorImage(torch.from_numpy(x).permute(0, 3, 1, 2) / 255)
    tfms = keras_tfms(**kwargs).batch_tfms
    for t in tfms:
        if hasattr(t, 'fit'): t.fit(xb)
    return Pipeline(tfms, split_idx=1)(xb).permute(0, 2, 3, 1).numpy()


def _keras_standardized(kwargs, x):
    gen = ImageDataGenerator(**kwargs)
    if any(kwargs.get(k) for k in ('featurewise_center', 'featurewise_std_normalization', 'zca_whitening')): gen.fit(x)
    return np.stack([gen.standardize(im.copy()) for im in x])  # Keras standardizes image by image


def _crops(n, size=(12, 16), seed=0):
    "n crops of the photo at 12x16 px (small enough for ZCA's 576x576 matrix)."
    rng = np.random.default_rng(seed)
    big = np.asarray(Image.fromarray(load_sample_image('china.jpg')), np.float32)
    r, c = rng.integers(0, big.shape[0] - size[0], n), rng.integers(0, big.shape[1] - size[1], n)
    return np.stack([big[i:i + size[0], j:j + size[1]] for i, j in zip(r, c)])


STANDARDIZE = {  # name: (arguments, how the project's output relates to Keras')
    'samplewise center + std': (dict(samplewise_center=True, samplewise_std_normalization=True), 1),
    'samplewise std alone (implies centring)': (dict(samplewise_std_normalization=True), 1),
    'samplewise center, rescale 1/255': (dict(samplewise_center=True, rescale=1 / 255), 1),
    'samplewise center, no rescale: 0..1 vs 0..255': (dict(samplewise_center=True), 255),
    'samplewise center, rescale=1: Keras units': (dict(samplewise_center=True, rescale=1.), 1),
    'featurewise center + std': (dict(featurewise_center=True, featurewise_std_normalization=True), 1),
    'featurewise std alone (implies centring)': (dict(featurewise_std_normalization=True), 1),
    'featurewise center, no rescale: 0..1 vs 0..255': (dict(featurewise_center=True), 255),
}


@pytest.mark.parametrize('case', STANDARDIZE, ids=str)
def test_standardisation_matches_keras(case):
    kwargs, units = STANDARDIZE[case]
    x = _crops(64)
    ref = _keras_standardized(kwargs, x)
    assert np.abs(_keras_tfms_output(kwargs, x) * units - ref).max() < 1e-3 * max(1., np.abs(ref).max())


# n < d: Keras keeps n directions, and where the crops are rank-deficient (identical sky crops) the last of them is
# an arbitrary vector of the null space; so those cases are compared on the training crops, which it does not touch
@pytest.mark.parametrize('n,eps,extra', [(400, 1e-6, {}), (400, 10., {}), (100, 1., {}), (100, 10., {}),
                                         (400, 1e-6, dict(featurewise_std_normalization=True, rescale=1 / 255))],
                         ids=['n>d', 'n>d eps=10', 'n<d eps=1 (unseen directions dropped)', 'n<d eps=10',
                              'with featurewise std (Keras switches it off), rescale 1/255'])
def test_zca_matches_keras(n, eps, extra):
    "ZCA fitted on n crops of 8x8 px (192 values), applied to crops it has not seen (n > d) or to its own (n < d)."
    kwargs = dict(zca_whitening=True, zca_epsilon=eps, **extra)
    x = _crops(n, size=(8, 8))
    held_out = _crops(32, size=(8, 8), seed=1) if n > 192 else x
    gen = ImageDataGenerator(**kwargs)
    gen.fit(x)
    ref = np.stack([gen.standardize(im.copy()) for im in held_out])
    tfms = keras_tfms(**kwargs).batch_tfms
    xb = TensorImage(torch.from_numpy(x).permute(0, 3, 1, 2) / 255)
    fitted = Pipeline([t for t in tfms if not isinstance(t, ZCAWhiten)], split_idx=1)(xb)
    zca = next(t for t in tfms if isinstance(t, ZCAWhiten)).fit(fitted)
    y = Pipeline(tfms, split_idx=1)(TensorImage(torch.from_numpy(held_out).permute(0, 3, 1, 2) / 255))
    assert zca.matrix is not None and not any(isinstance(t, FeaturewiseNormalize) for t in tfms)
    assert np.abs(y.permute(0, 2, 3, 1).numpy() - ref).mean() < 2e-3 * np.abs(ref).mean()


# -- the random-range semantics: distributions over N_DRAWS draws ----------------------------------------------------

def keras_draws(key, **kwargs):
    gen, rng = ImageDataGenerator(**kwargs), np.random.get_state()
    np.random.seed(0)
    try: return np.array([gen.get_random_transform((H, W, 3))[key] for _ in range(N_DRAWS)], np.float64)
    finally: np.random.set_state(rng)


def big(c=1): return torch.zeros(1, c, H, W).expand(N_DRAWS, c, H, W)


def our_matrices(**kwargs):
    "keras_tfms' affine transform's matrices, one per image, drawn for N_DRAWS images (before fastai's aspect step)."
    torch.manual_seed(0)
    return [f(big()).double() for f in keras_tfms(**kwargs).batch_tfms[0].aff_fs]


def our_pixel_magnitudes(**kwargs):
    torch.manual_seed(0)
    chain = keras_tfms(**kwargs).batch_tfms[0]
    tfms = getattr(chain, 'tfms', [chain])
    for t in tfms: t.before_call(big(3), 0)
    return [t.magnitude.double().numpy() for t in tfms]


# Keras' parameter -> the project's value of the same geometry (the conventions above: sign, axes swap)
CONTINUOUS = {
    'rotation_range=25': (dict(rotation_range=25), 'theta', lambda m: -np.degrees(np.arctan2(m[:, 0, 1], m[:, 0, 0]))),
    # Keras 3 draws ty from width_shift_range times the width (and applies it to the rows: the axes convention)
    'width_shift_range=0.2 (fraction)': (dict(width_shift_range=.2), 'ty', lambda m: -m[:, 0, 2] * W / 2),
    'height_shift_range=0.1 (fraction)': (dict(height_shift_range=.1), 'tx', lambda m: -m[:, 1, 2] * H / 2),
    'width_shift_range=3.5 (pixels)': (dict(width_shift_range=3.5), 'ty', lambda m: -m[:, 0, 2] * W / 2),
    'shear_range=20': (dict(shear_range=20), 'shear', lambda m: -np.degrees(np.arcsin(m[:, 0, 1]))),
    'zoom_range=0.2 (x)': (dict(zoom_range=.2), 'zx', lambda m: m[:, 0, 0]),
    'zoom_range=[0.5, 1.5] (y)': (dict(zoom_range=[.5, 1.5]), 'zy', lambda m: m[:, 1, 1]),
}


@pytest.mark.parametrize('case', CONTINUOUS, ids=str)
def test_random_range_distribution(case):
    kwargs, key, value = CONTINUOUS[case]
    ref, got = keras_draws(key, **kwargs), value(our_matrices(**kwargs)[0].numpy())
    assert stats.ks_2samp(ref, got).pvalue > 1e-3, (ref.min(), ref.max(), got.min(), got.max())


def test_zoom_axes_independent_as_keras():
    m = our_matrices(zoom_range=.3)[0].numpy()
    zx, zy = m[:, 0, 0], m[:, 1, 1]
    kx, ky = keras_draws('zx', zoom_range=.3), keras_draws('zy', zoom_range=.3)
    assert abs(np.corrcoef(zx, zy)[0, 1]) < .05 and abs(np.corrcoef(kx, ky)[0, 1]) < .05


@pytest.mark.parametrize('rng', [5, [4, 12], [.05, .1]], ids=['int 5', 'list [4, 12] px', 'list of fractions'])
def test_discrete_shift_ranges(rng):
    "An int r: 0..r-1 with a random sign (0 twice as likely); a list: its values with a random sign, as Keras draws."
    ref = keras_draws('ty', width_shift_range=rng)
    m = our_matrices(width_shift_range=rng)[0]
    got = -m[:, 0, 2].numpy() * W / 2  # content moved right by dx; Keras moves it by -ty: the same distribution
    vals = np.unique(np.round(np.concatenate([ref, got]), 4))
    freq = lambda d: np.array([np.mean(np.isclose(d, v, atol=1e-3)) for v in vals])
    assert np.allclose(freq(ref).sum(), 1) and np.abs(freq(ref) - freq(got)).max() < .03, (vals, freq(ref), freq(got))


@pytest.mark.parametrize('kwargs,key,scale', [(dict(channel_shift_range=30), 'channel_shift_intensity', 255),
                                              (dict(brightness_range=(.5, 1.5)), 'brightness', 1)])
def test_pixel_range_distribution(kwargs, key, scale):
    got = our_pixel_magnitudes(**kwargs)[0] * scale
    assert stats.ks_2samp(keras_draws(key, **kwargs), got).pvalue > 1e-3


@pytest.mark.parametrize('kwargs,key', [(dict(horizontal_flip=True), 'flip_horizontal'),
                                        (dict(vertical_flip=True), 'flip_vertical')])
def test_flip_probability(kwargs, key):
    m = our_matrices(**kwargs)[0]
    flipped = (m[:, 0, 0] < 0) if key == 'flip_horizontal' else (m[:, 1, 1] < 0)
    assert abs(float(flipped.double().mean()) - keras_draws(key, **kwargs).mean()) < .04


def test_validation_split_per_class_folder(tmp_path):
    "Keras validates the first fraction of each class folder's sorted files, however the items are ordered."
    from fastai.vision.all import get_image_files
    for cls, n in (('cat', 10), ('dog', 5), ('emu', 7)):
        (tmp_path / cls).mkdir()
        for i in range(n): Image.new('RGB', (4, 4)).save(tmp_path / cls / f"{cls}_{(i * 3) % n:02d}.png")
    items = sorted(get_image_files(tmp_path), key=lambda p: p.name[::-1])  # an order that is neither sorted nor by class
    it = ImageDataGenerator(validation_split=.3).flow_from_directory(tmp_path, subset='validation', target_size=(4, 4))
    train, valid = keras_tfms(validation_split=.3).splitter(items)
    assert sorted(str(items[i].relative_to(tmp_path)) for i in valid) == sorted(it.filenames)
    assert sorted(train + valid) == list(range(len(items)))


def test_signature_is_image_data_generators():
    "keras_tfms takes ImageDataGenerator's keyword arguments with Keras' defaults (show_doc, tab completion)."
    import inspect
    ours_sig = {k: p.default for k, p in inspect.signature(keras_tfms).parameters.items()}
    theirs = {k: p.default for k, p in inspect.signature(ImageDataGenerator.__init__).parameters.items() if k != 'self'}
    assert ours_sig == theirs
