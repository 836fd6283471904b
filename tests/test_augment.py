"Augmentation wing: identities, semantics against independent references, one resampling pass, errors, Keras mapping."
import math
from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from fastai.vision.all import (TensorImage, TensorMask, TensorPoint, TensorBBox, Pipeline, Rotate, Flip,
                               aug_transforms, set_seed)

from fastai_cnntricks.core import CnnTricksError
from fastai_cnntricks.augment import *

GEOM = [lambda **k: Shear(0, p=1., **k), lambda **k: Shift(0, 0, p=1., **k), lambda **k: ZoomXY(1, 1, p=1., **k),
        lambda **k: FlipVertical(p=0., **k)]
PIX = [ChannelShift(0, p=1.), BrightnessFactor(1, 1, p=1.), GaussianNoise(0, p=1.), SaltPepper(0, p=1.),
       GaussianBlur((0, 0), p=1.), Cutout((0, 0), p=1.)]


def batch(n=4, c=3, h=12, w=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorImage(torch.rand(n, c, h, w, generator=g))


@settings(max_examples=8, deadline=None)
@given(fill=st.sampled_from(FILL_MODES), k=st.integers(0, 3), ac=st.booleans(), h=st.integers(5, 20))
def test_geometric_magnitude_zero_is_identity(fill, k, ac, h):
    x = batch(h=h)
    y = GEOM[k](fill_mode=fill, cval=0.3, align_corners=ac)(x, split_idx=0)
    assert isinstance(y, TensorImage) and y.shape == x.shape and y.dtype == x.dtype
    assert (y - x).abs().max() <= 1e-5


@pytest.mark.parametrize('tfm', PIX, ids=lambda t: type(t).__name__)
def test_pixel_magnitude_zero_is_identity_and_valid_untouched(tfm):
    x = batch()
    y = tfm(x, split_idx=0)
    assert isinstance(y, TensorImage) and y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    assert (y - x).abs().max() <= 1e-5
    assert type(tfm)(p=1.) (x, split_idx=1) is x  # validation set: no augmentation at all


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 1000))
def test_full_pipeline_finite_seeded_and_input_unchanged(seed):
    tfms = fuse_tfms(keras_tfms(rotation_range=20, width_shift_range=.2, height_shift_range=3, shear_range=15,
                                zoom_range=.2, horizontal_flip=True, vertical_flip=True, brightness_range=(.5, 1.5),
                                channel_shift_range=30, fill_mode='wrap').batch_tfms
                     + [GaussianNoise(.1), SaltPepper(.05), GaussianBlur(), Cutout()])
    x = batch(seed=seed); x0 = x.clone()
    pipe = Pipeline(tfms, split_idx=0)
    set_seed(seed); a = pipe(x)
    set_seed(seed); b = pipe(x)
    assert torch.equal(a, b) and torch.isfinite(a).all() and a.shape == x.shape
    assert torch.equal(x, x0)  # the batch passed in is not modified (in-place work happens on our own copy)
    set_seed(seed + 1)
    assert not torch.equal(pipe(x), a)


def test_shift_half_width_wrap_is_roll():
    x = batch(h=10, w=16)
    for ac in (False, True):
        y = Shift(0.5, 0, p=1., draw_x=0.5, fill_mode='wrap', align_corners=ac)(x, split_idx=0)
        assert (y - torch.roll(x, 8, -1)).abs().max() < 1e-5
    y = Shift(4, 3, p=1., draw_x=4., draw_y=-3., fill_mode='wrap')(x, split_idx=0)
    assert (y - torch.roll(x, (-3, 4), (-2, -1))).abs().max() < 1e-5
    assert (Shift(fill_mode='wrap').apply_fixed(x, 0.5) - torch.roll(x, (5, 8), (-2, -1))).abs().max() < 1e-5


def test_shift_constant_nearest_reflect_fill():
    x = batch(h=8, w=8)
    y = Shift(3, 0, p=1., draw_x=3., fill_mode='constant', cval=0.25)(x, split_idx=0)
    assert torch.allclose(y[..., :3], torch.tensor(0.25)) and torch.allclose(y[..., 3:], x[..., :-3], atol=1e-5)
    y = Shift(3, 0, p=1., draw_x=3., fill_mode='nearest')(x, split_idx=0)
    assert torch.allclose(y[..., :3], x[..., :1].expand(-1, -1, -1, 3), atol=1e-5)
    for ac in (False, True):  # Keras/scipy 'reflect': d c b a | a b c d (half-sample symmetric)
        y = Shift(3, 0, p=1., draw_x=3., fill_mode='reflect', align_corners=ac)(x, split_idx=0)
        assert torch.allclose(y[..., :3], x[..., :3].flip(-1), atol=1e-5)


def test_shear_maps_known_point():
    "A single bright pixel lands where the forward shear x' = x + tan(a) * y says (pixel coordinates from centre)."
    h = w = 33
    x = torch.zeros(1, 1, h, w); r, c = 8, 16  # row 8 is y = -8 from the centre
    x[0, 0, r, c] = 1.
    a = 30.
    y = Shear(45, p=1., draw=a, fill_mode='zeros', mode='nearest')(TensorImage(x), split_idx=0)
    rr, cc = divmod(int(y.flatten().argmax()), w)
    assert rr == r and cc == round(c + math.tan(math.radians(a)) * (r - 16))
    m = shear_mat(x, draw=a, p=1.)[0]
    assert torch.allclose(m[:2, :2], torch.tensor([[1., -math.tan(math.radians(a))], [0., 1.]]))


def test_zoomxy_independent_axes_and_keras_convention():
    x = batch(n=64)
    m = zoomxy_mat(x, 0.5, 2., p=1.)
    assert not torch.allclose(m[:, 0, 0], m[:, 1, 1])
    assert (1 / m[:, 0, 0]).min() >= 0.5 - 1e-6 and (1 / m[:, 0, 0]).max() <= 2 + 1e-6
    km = zoomxy_mat(x, 0.5, 2., p=1., draw_x=2., draw_y=0.5, keras=True)
    assert torch.allclose(km[0, 0, 0], torch.tensor(2.)) and torch.allclose(km[0, 1, 1], torch.tensor(.5))


def test_masks_points_bboxes_move_with_image():
    x = torch.zeros(2, 1, 16, 16); x[:, :, 2:6, 3:7] = 1.
    mask = TensorMask(x[:, 0].long())
    pts = TensorPoint(torch.tensor([[[-0.5, -0.25]], [[0.25, 0.5]]]), img_size=(16, 16))
    box = TensorBBox(torch.tensor([[[-0.5, -0.5, 0., 0.]], [[-0.5, -0.5, 0., 0.]]]), img_size=(16, 16))
    t = Shift(4, 2, p=1., draw_x=4., draw_y=2., fill_mode='zeros')
    xi, m, p, b = t((TensorImage(x), mask, pts, box), split_idx=0)
    assert torch.equal(m, TensorMask(xi[:, 0].round().long())) and m.dtype == torch.long
    assert torch.equal(m[:, 4:8, 7:11], torch.ones(2, 4, 4, dtype=torch.long))
    assert torch.allclose(p, pts + torch.tensor([4 * 2 / 16, 2 * 2 / 16]), atol=1e-5)  # normalized units
    assert torch.allclose(b, box + torch.tensor([.5, .25, .5, .25]), atol=1e-5)


def count_grid_samples(f):
    "How many times `f()` resamples (outermost `F.grid_sample` calls; a tensor subclass re-enters it once), and its result."
    calls, depth, orig = [0], [0], F.grid_sample
    def counting(*a, **k):
        calls[0] += depth[0] == 0
        depth[0] += 1
        try: return orig(*[o.as_subclass(torch.Tensor) if isinstance(o, torch.Tensor) else o for o in a], **k)
        finally: depth[0] -= 1
    with mock.patch('torch.nn.functional.grid_sample', counting): res = f()
    return calls[0], res


def _count_grid_samples(f): return count_grid_samples(f)[0]


def test_one_resampling_pass_with_aug_transforms():
    x = batch(n=2)
    tfms = fuse_tfms(aug_transforms() + [Shear(10), Shift(.1), ZoomXY(.9, 1.1), FlipVertical()], fill_mode='wrap')
    assert sum(isinstance(t, AffineFill) for t in tfms) == 1
    assert _count_grid_samples(lambda: Pipeline(tfms, split_idx=0)(x)) == 1
    # fastai's own route: aug_transforms composes xtra AffineCoordTfms into its single pass
    assert _count_grid_samples(lambda: Pipeline(aug_transforms(xtra_tfms=[Shear(10), Shift(.1)]), split_idx=0)(x)) == 1
    # unfused, each transform would resample: the counter can fail
    assert _count_grid_samples(lambda: Pipeline([Shear(10), Shift(.1)], split_idx=0)(x)) == 2


def test_fused_equals_product_of_matrices():
    "Fusing rotate + shear + shift resamples once by the product of the same matrices as drawn separately."
    x = batch(n=3, h=20, w=20)
    tfms = [Rotate(30, p=1., draw=20.), Shear(30, p=1., draw=10.), Shift(.2, .2, p=1., draw_x=.1, draw_y=-.1)]
    fused = fuse_tfms(tfms, fill_mode='zeros')[0]
    y = fused(x, split_idx=0)
    from fastai.vision.augment import rotate_mat
    mat = rotate_mat(x, p=1., draw=20.) @ shear_mat(x, p=1., draw=10.) @ shift_mat(x, p=1., draw_x=.1, draw_y=-.1)
    assert (y - apply_affine(x, mat, fill_mode='zeros')).abs().max() < 1e-5


def test_channel_shift_within_range_and_keras_semantics():
    x = batch(n=8) * .5 + .2
    y = ChannelShift(.4, p=1.)(x, split_idx=0)
    lo, hi = x.flatten(1).amin(1), x.flatten(1).amax(1)
    assert (y.flatten(1).amin(1) >= lo - 1e-6).all() and (y.flatten(1).amax(1) <= hi + 1e-6).all()
    s = torch.tensor([.1, -.1] * 4)
    ref = np.stack([np.clip(xi + si, xi.min(), xi.max()) for xi, si in zip(x.numpy(), s.numpy())])
    assert np.allclose(channel_shift(x, s).numpy(), ref, atol=1e-6)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 1000), order=st.permutations([0, 1, 2, 3]), cap=st.booleans())
def test_pixel_chain_fused_pass_equals_one_after_another(seed, order, cap):
    "PixelChain merges ChannelShift/BrightnessFactor runs into one multiply-add + clamp: same result as in turn."
    x = batch(n=16, seed=seed) * .6 + .2
    torch.manual_seed(seed)
    pool = [ChannelShift(.5, p=.7), BrightnessFactor(0., 1.8, p=.7), ChannelShift(.3, p=.5),
            BrightnessFactor(.5, 1.5, max_value=1. if cap else None, p=.6)]
    tfms = [pool[i] for i in order] + [GaussianNoise(.1, p=.5)]
    chain = PixelChain(tfms)
    y = chain(x, split_idx=0)  # draws the magnitudes, then the noise
    torch.manual_seed(seed)  # the same draws again, for the reference
    chain.before_call(x, 0)
    ref = x.as_subclass(torch.Tensor)
    for t in tfms: ref = t._apply(ref, t.magnitude)
    assert (y.as_subclass(torch.Tensor) - ref).abs().max() <= 1e-5


def test_brightness_blur_saltpepper_cutout_semantics():
    from scipy import ndimage
    x = batch(n=2, h=24, w=24)
    y = BrightnessFactor(.5, .5, p=1.)(x, split_idx=0)
    assert torch.allclose(y, x * .5)
    assert torch.allclose(brightness_factor(x, 3.), (x * 3).clamp(0, 1))
    ref = np.stack([[ndimage.gaussian_filter(c, 1.5, mode='mirror', truncate=3.) for c in im] for im in x.numpy()])
    assert np.abs(gaussian_blur(x, 1.5).numpy() - ref).max() < 1e-4
    sp = salt_pepper(x, .3)
    changed = (sp != x).any(1)
    assert 0.2 < changed.float().mean() < 0.4 and set(sp.permute(0, 2, 3, 1)[changed].unique().tolist()) <= {0., 1.}
    co = cutout(x, .5, fill=-1.)
    assert ((co == -1).all(1).flatten(1).sum(1) <= 12 * 12).all() and (co == -1).any()
    n = GaussianNoise(.2).apply_fixed(torch.zeros(4, 3, 64, 64), .2)
    assert abs(float(n.std()) - .2) < .01


def test_stats_featurewise_samplewise_rescale():
    x = TensorImage(torch.randn(200, 3, 4, 4) * torch.tensor([1., 2., 3.]).reshape(1, 3, 1, 1) + 5)
    f = FeaturewiseNormalize().fit(x)
    y = f(x)
    assert torch.allclose(y.mean((0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(y.std((0, 2, 3), correction=0), torch.ones(3), atol=1e-4)
    assert torch.allclose(f.decode(y), x, atol=1e-4)
    s = SamplewiseNormalize()(x)
    assert torch.allclose(s.flatten(1).mean(1), torch.zeros(200), atol=1e-5)
    assert torch.allclose(s.flatten(1).std(1, correction=0), torch.ones(200), atol=1e-4)
    assert torch.allclose(Rescale(.5)(x), x * .5)


def test_zca_identity_covariance_and_errors():
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(48, 48, generator=g)
    x = TensorImage((torch.randn(3000, 48, generator=g) @ mix + 2).reshape(-1, 3, 4, 4))
    z = ZCAWhiten(eps=1e-6)
    with pytest.raises(CnnTricksError, match='not fitted'): z(x)
    z.fit(x)
    w = z(x).flatten(1).double()  # Keras centres per channel: identity second moment (not covariance)
    assert torch.allclose(w.T @ w / len(w), torch.eye(48, dtype=torch.float64), atol=1e-3)
    assert torch.allclose(z.decode(z(x)), x, atol=1e-3)
    few = ZCAWhiten(eps=1e-6).fit(x[:10])  # 10 images, 48 dimensions: the 38 unseen directions are dropped
    assert torch.linalg.matrix_rank(few.matrix.double(), atol=1e-6) == 10
    assert few(x[10:]).abs().max() < 50 * x.abs().max()
    with pytest.raises(CnnTricksError, match='max_dim'): ZCAWhiten(max_dim=10).fit(x)


def test_stats_fitted_from_dataloaders_on_clean_training_images():
    from fastai_cnntricks.data import digits_dls
    f, z = FeaturewiseNormalize(), ZCAWhiten(eps=1e-2)
    dls = digits_dls(size=8, bs=256, batch_tfms=[Flip(), ChannelShift(.5), f, z])
    clean = torch.cat(list(training_images(dls, 93)))
    assert torch.allclose(f.mean.flatten().float(), clean.mean((0, 2, 3)), atol=1e-5)
    xb, _ = dls.valid.one_batch()  # standardization runs on validation batches too
    assert xb.shape[1:] == (3, 8, 8) and abs(float(xb.mean())) < .3


def test_bad_input_errors():
    with pytest.raises(CnnTricksError, match='max_deg'): Shear(-1)
    with pytest.raises(CnnTricksError, match='width'): Shift(-.1)
    with pytest.raises(CnnTricksError, match='fill_mode'): Shift(fill_mode='mirror')
    with pytest.raises(CnnTricksError, match='min_zoom'): ZoomXY(1.2, 1.1)
    with pytest.raises(CnnTricksError, match='min_factor'): BrightnessFactor(1.2, .8)
    with pytest.raises(CnnTricksError, match='brightness_range'): keras_tfms(brightness_range=.2)
    with pytest.raises(CnnTricksError, match='max_shift'): ChannelShift(-1)
    with pytest.raises(CnnTricksError, match='std'): GaussianNoise(-1)
    with pytest.raises(CnnTricksError, match='fill_mode'): keras_tfms(fill_mode='reflection')
    with pytest.raises(CnnTricksError, match='rotation_range'): keras_tfms(rotation_range=-5)
    with pytest.raises(TypeError, match='rotation'): keras_tfms(rotation=10)


def test_keras_tfms_mapping():
    kt = keras_tfms(featurewise_center=True, samplewise_center=True, featurewise_std_normalization=True,
                    samplewise_std_normalization=True, zca_whitening=False, zca_epsilon=1e-6, rotation_range=10,
                    width_shift_range=.1, height_shift_range=.1, brightness_range=(.8, 1.2), shear_range=5,
                    zoom_range=.1, channel_shift_range=10, fill_mode='constant', cval=51, horizontal_flip=True,
                    vertical_flip=True, rescale=1 / 255, preprocessing_function=lambda im: im, validation_split=.2,
                    data_format='channels_last', dtype='float32')
    names = [type(t).__name__ for t in kt.batch_tfms]
    assert names == ['AffineFill', 'PixelChain', 'Preprocess', 'Rescale', 'SamplewiseNormalize',
                     'FeaturewiseNormalize']
    aff = kt.batch_tfms[0]
    assert aff.fill_mode == 'constant' and abs(aff.cval - .2) < 1e-9 and len(aff.aff_fs) == 6
    assert [type(t).__name__ for t in kt.batch_tfms[1].tfms] == ['ChannelShift', 'BrightnessFactor']
    assert abs(kt.batch_tfms[1].tfms[0].max_shift - 10 / 255) < 1e-9
    assert kt.splitter(list(range(10))) == (list(range(2, 10)), [0, 1])
    assert [type(t).__name__ for t in keras_tfms(zca_whitening=True).batch_tfms] == ['ZCAWhiten']
    assert keras_tfms().batch_tfms == [] and 'splitter' not in keras_tfms()


def test_keras_preprocessing_function_gets_keras_units():
    seen = []
    kt = keras_tfms(preprocessing_function=lambda im: (seen.append(im.shape), im / 127.5 - 1)[1])
    y = Pipeline(kt.batch_tfms, split_idx=0)(TensorImage(torch.ones(2, 3, 5, 6)))
    assert seen == [(5, 6, 3)] * 2 and torch.allclose(y, torch.ones(1))


def test_apply_fixed_every_transform():
    x = batch(n=2, h=16, w=16)
    for t, m in [(Shear(), 0.), (Shift(), 0.), (ZoomXY(), 1.), (FlipVertical(), 0.), (ChannelShift(), 0.),
                 (BrightnessFactor(), 1.), (GaussianNoise(), 0.), (SaltPepper(), 0.), (GaussianBlur(), 0.),
                 (Cutout(), 0.)]:
        assert (t.apply_fixed(x, m) - x).abs().max() <= 1e-5, type(t).__name__
    assert torch.allclose(FlipVertical().apply_fixed(x, 1.), x.flip(-2), atol=1e-5)
