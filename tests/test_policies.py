"""Policies built from the label-preservation answer: class-conditional augmentation, the invariance-bounded
TrivialAugment, label-safe TTA. Real digits batches; tables and safe dicts made by hand (the shapes
`safe_magnitudes()` returns), so these tests do not depend on how the label check measures."""

import pandas as pd
import pytest
import torch
import torch.nn as nn
from fastai.learner import Learner
from fastai.vision.augment import aug_transforms, Rotate, Flip
from fastai.torch_core import TensorImage
from fasttransform import Pipeline, Transform

from fastai_cnntricks.core import CnnTricksError
from fastai_cnntricks.data import array_dls, digits_arrays, digits_dls
from fastai_cnntricks.augment import (POLICY_OPS, TRIVIAL_AUGMENT_RANGES, AffineFill, OpDraws, bounded_trivial_augment,
                                      class_conditional_tfms, fuse_tfms, trivial_augment)
from fastai_cnntricks.augment import drawn_ops
from fastai_cnntricks.invariance.catalogue import FIXED_TFMS, rotate_fixed
from fastai_cnntricks.invariance import label_tta  # noqa: F401  (adds Learner.label_safe_tta)
from test_augment import count_grid_samples

VOCAB = [str(i) for i in range(10)]
SAFE = {'rotate': 15., 'shift': .1, 'zoom_in': 1.2, 'darken': .6, 'noise': .05, 'hflip': 0, 'vflip': 0,
        'blur': 0.}  # flips and blur not safe: left out


def _table(**cols):
    "A class x transform table: cols name -> {class: limit}; other classes get the transform's neutral value."
    neutral = {n: e.settings['neutral'] for n, e in FIXED_TFMS.items()}
    return pd.DataFrame({n: [float(v.get(c, neutral[n])) for c in VOCAB] for n, v in cols.items()},
                        index=pd.Index(VOCAB, name='class'))


@pytest.fixture(scope='module')
def batch():
    "One real digits training batch at 32 px (after IntToFloatTensor), its labels."
    torch.manual_seed(0)
    x, y = digits_dls(size=32, bs=128).train.one_batch()
    return x, y




# -- class-conditional augmentation ---------------------------------------------------------------------------------

def test_class_conditional_rotates_only_safe_classes(batch):
    x, y = batch
    tfms = class_conditional_tfms(_table(rotate={'0': 180, '1': 180, '8': 180}), VOCAB, p=1.)
    torch.manual_seed(1)
    n, (out, y2) = count_grid_samples(lambda: Pipeline(tfms, split_idx=0)((x, y)))
    assert n == 1 and torch.equal(y2, y)
    inc = torch.isin(y, torch.tensor([0, 1, 8]))
    assert 0 < int(inc.sum()) < len(y)
    assert torch.equal(out[~inc], x[~inc])  # excluded classes: bit for bit
    m = tfms[0].params[0]  # the drawn angles
    assert (m[~inc] == 0).all() and (m[inc].abs() <= 180).all() and (m[inc].abs() > 0).all()
    # each included item is rotated by its drawn angle (the catalogue's fixed rotation at that angle)
    i = torch.nonzero(inc)[:, 0]
    ref = torch.cat([rotate_fixed(x[k:k + 1], float(m[k])) for k in i[:8]])
    assert torch.allclose(out[i[:8]], ref, atol=1e-5)
    assert (out[inc] - x[inc]).flatten(1).abs().amax(1).min() > .05


def test_class_conditional_validation_untouched_and_in_dls(batch):
    x, y = batch
    table = _table(rotate={'0': 180, '1': 180, '8': 180}, darken={'3': .5}, shift={'7': .2})
    tfms = class_conditional_tfms(table, VOCAB, p=1.)
    out, _ = Pipeline(tfms, split_idx=1)((x, y))
    assert torch.equal(out, x)
    dls0, dls = digits_dls(size=32, bs=64), digits_dls(size=32, bs=64, batch_tfms=tfms)
    assert torch.equal(dls.valid.one_batch()[0], dls0.valid.one_batch()[0])  # validation: untouched
    xt, yt = dls.train.one_batch()  # training: runs inside fastai's pipeline (labels read from the tuple)
    assert xt.shape == (64, 3, 32, 32) and xt.dtype == torch.float32 and 0 <= float(xt.min()) <= float(xt.max()) <= 1
    # darken only the 3s, shift only the 7s: others equal, bit for bit
    torch.manual_seed(2)
    out, _ = Pipeline(tfms, split_idx=0)((x, y))
    other = ~torch.isin(y, torch.tensor([0, 1, 3, 7, 8]))
    assert torch.equal(out[other], x[other])
    threes = y == 3
    assert (out[threes].flatten(1).sum(1) < x[threes].flatten(1).sum(1)).all()  # darkened
    params = tfms[0].params  # rows: rotate, darken, shift_x, shift_y
    assert [op.name for op in tfms[0].ops] == ['rotate', 'darken', 'shift_x', 'shift_y']
    assert ((params[1][threes] >= .5) & (params[1][threes] < 1)).all() and (params[1][~threes] == 1).all()
    assert (params[2:][:, y != 7] == 0).all() and (params[2:][:, y == 7].abs() <= .2).all()


def test_class_conditional_fuses_into_one_pass(batch):
    x, y = batch
    tfms = fuse_tfms([Flip(p=.5), Rotate(10, p=1.), *class_conditional_tfms(_table(rotate={'8': 90}), VOCAB)])
    assert sum(isinstance(t, AffineFill) for t in tfms) == 1
    n, (out, _) = count_grid_samples(lambda: Pipeline(tfms, split_idx=0)((x, y)))
    assert n == 1 and out.shape == x.shape


def test_class_conditional_p_and_reproducible(batch):
    x, y = batch
    tfms = class_conditional_tfms(_table(rotate={c: 30 for c in VOCAB}), VOCAB, p=.5)
    torch.manual_seed(3); a, _ = Pipeline(tfms, split_idx=0)((x, y)); pa = tfms[0].params.clone()
    torch.manual_seed(3); b, _ = Pipeline(tfms, split_idx=0)((x, y))
    assert torch.equal(a, b) and torch.equal(pa, tfms[0].params)
    frac = float((pa[0] != 0).float().mean())
    assert .3 < frac < .7


def test_class_conditional_bad_input(batch):
    x, y = batch
    t = _table(rotate={'0': 180})
    with pytest.raises(CnnTricksError, match='table'): class_conditional_tfms({'rotate': 1}, VOCAB)
    with pytest.raises(CnnTricksError, match='missing'): class_conditional_tfms(t.iloc[:5], VOCAB)
    with pytest.raises(CnnTricksError, match='table column'): class_conditional_tfms(t.rename(columns={'rotate': 'spin'}), VOCAB)
    with pytest.raises(CnnTricksError, match="limit of 'rotate'"): class_conditional_tfms(_table(rotate={'0': 400}), VOCAB)
    with pytest.raises(CnnTricksError, match='on/off'): class_conditional_tfms(_table(hflip={'0': .5}), VOCAB)
    with pytest.raises(CnnTricksError, match='p=2'): class_conditional_tfms(t, VOCAB, p=2)
    with pytest.raises(CnnTricksError, match='fill_mode'): class_conditional_tfms(t, VOCAB, fill_mode='mirror')
    with pytest.raises(CnnTricksError, match='vocab'): class_conditional_tfms(t, ['0', '0'])
    tfms = class_conditional_tfms(t, VOCAB)
    with pytest.raises(CnnTricksError, match='single-label'): Pipeline(tfms, split_idx=0)(x)  # no labels
    with pytest.raises(CnnTricksError, match='outside'): Pipeline(tfms, split_idx=0)((x, y + 10))


# -- the invariance-bounded TrivialAugment --------------------------------------------------------------------------

def test_op_table_matches_the_catalogue():
    for name, e in FIXED_TFMS.items():
        ops = [op for op in POLICY_OPS.values() if op.source == name]
        assert ops, name
        for op in ops:
            s = e.settings
            assert (op.neutral, tuple(op.valid), op.continuous) == (s['neutral'], tuple(s['valid']), s['continuous'])


def test_bounded_policy_one_op_per_image_within_bounds(batch):
    x, _ = batch
    tfms = bounded_trivial_augment(SAFE)
    draws = tfms[0]
    assert isinstance(draws, OpDraws)
    names = [op.name for op in draws.ops]
    assert names == ['rotate', 'shift_x', 'shift_y', 'zoom_in', 'darken', 'noise']  # unsafe ones left out
    big = x.repeat(16, 1, 1, 1)  # 2048 draws at once
    torch.manual_seed(4)
    params = draws.sampler(big, None)
    choice = draws.sampler.choice
    neutral = torch.tensor([op.neutral for op in draws.ops])[:, None]
    moved = params != neutral
    assert (moved.sum(0) <= 1).all()  # at most one operation per image ...
    assert torch.equal(moved.sum(0) == 1, choice < len(names))  # ... exactly one unless the identity was drawn
    assert set(choice.tolist()) == set(range(len(names) + 1))  # every op and the identity are drawn
    lim = {'rotate': 15, 'shift_x': .1, 'shift_y': .1, 'zoom_in': 1.2, 'darken': .6, 'noise': .05}
    for k, nm in enumerate(names):
        m = params[k][choice == k]
        if draws.ops[k].signed:
            assert (m.abs() <= lim[nm]).all() and (m < 0).any() and (m > 0).any()
            assert float(m.abs().max()) > .9 * lim[nm]  # uniform up to the limit, not a fixed value
        else:
            lo, hi = sorted((draws.ops[k].neutral, lim[nm]))
            assert ((m >= lo) & (m <= hi)).all() and float((m - m.mean()).abs().max()) > .3 * (hi - lo)
    torch.manual_seed(4)
    assert torch.equal(draws.sampler(big, None), params)  # a fixed seed reproduces the draws


def test_bounded_policy_one_pass_no_per_image_loop(batch, monkeypatch):
    x, y = batch
    calls = {}
    def spy(name, fn):
        def f(*a, **k):
            calls[name] = calls.get(name, 0) + 1
            return fn(*a, **k)
        return f
    for nm in ('darken', 'noise'):
        monkeypatch.setitem(POLICY_OPS, nm, POLICY_OPS[nm]._replace(fn=spy(nm, POLICY_OPS[nm].fn)))
    for nm in ('rotate_mat', 'shift_mat', 'zoomxy_mat'): monkeypatch.setattr(drawn_ops, nm, spy(nm, getattr(drawn_ops, nm)))
    tfms = bounded_trivial_augment(SAFE)
    torch.manual_seed(5)
    n, (out, _) = count_grid_samples(lambda: Pipeline(tfms, split_idx=0)((x, y)))
    assert n == 1  # the geometric operations: one grid_sample
    assert calls == {'rotate_mat': 1, 'shift_mat': 2, 'zoomxy_mat': 1, 'darken': 1, 'noise': 1}  # per op, not per image
    choice = tfms[0].sampler.choice
    ident = choice == len(tfms[0].ops)
    assert ident.any() and torch.equal(out[ident], x[ident])  # the identity: untouched
    assert ((out - x).flatten(1).abs().amax(1)[~ident] > 0).all()
    # with fastai's aug_transforms fused in: still one pass
    fused = fuse_tfms([*aug_transforms(), *bounded_trivial_augment(SAFE)])
    assert count_grid_samples(lambda: Pipeline(fused, split_idx=0)((x, y)))[0] == 1
    assert torch.equal(Pipeline(tfms, split_idx=1)((x, y))[0], x)  # validation untouched


def test_unbounded_trivial_augment(batch):
    x, y = batch
    tfms = trivial_augment()
    draws = tfms[0]
    assert {op.source for op in draws.ops} == set(TRIVIAL_AUGMENT_RANGES)
    torch.manual_seed(6)
    params = draws.sampler(x.repeat(16, 1, 1, 1), None)
    rot = [op.name for op in draws.ops].index('rotate')
    assert float(params[rot].abs().max()) > 100  # up to 135 degrees, far beyond a label-safe 15
    out, _ = Pipeline(tfms, split_idx=0)((x, y))
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert bounded_trivial_augment({'rotate': 0, 'hflip': 0}) == []  # nothing safe: no augmentation


def test_policy_bad_input():
    with pytest.raises(CnnTricksError, match='safe=None'): bounded_trivial_augment(None)
    with pytest.raises(CnnTricksError, match='limits'): bounded_trivial_augment([('rotate', 15)])
    with pytest.raises(CnnTricksError, match='transform name'): bounded_trivial_augment({'spin': 15})
    with pytest.raises(CnnTricksError, match="limit of 'darken'"): bounded_trivial_augment({'darken': 1.5})
    with pytest.raises(CnnTricksError, match='on/off'): bounded_trivial_augment({'vflip': .5})
    with pytest.raises(CnnTricksError, match="limit of 'rotate'"): bounded_trivial_augment({'rotate': float('nan')})
    with pytest.raises(CnnTricksError, match='identity'): trivial_augment(identity='yes')
    with pytest.raises(CnnTricksError, match='fill_mode'): trivial_augment(fill_mode='mirror')


# -- label-safe TTA -------------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def learn():
    "A small CNN on 120 real digits (32 validation) at 16 px, its DataLoaders training with fastai's aug_transforms (90-degree turns)."
    x, y = digits_arrays()
    dls = array_dls(x[:120], y[:120], size=16, valid_idxs=list(range(88, 120)), bs=32, num_workers=0,
                    batch_tfms=aug_transforms(max_rotate=90, p_affine=1.))  # num_workers=0: no worker start per pass
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    return Learner(dls, model)


def _state(dls):
    return [(nm, id(getattr(dl, nm)), [id(t) for t in getattr(dl, nm).fs], getattr(dl, nm).split_idx,
             [sorted(t.__dict__) for t in getattr(dl, nm).fs])
            for dl in dls.loaders for nm in ('after_item', 'before_batch', 'after_batch')]


def test_label_safe_tta_uses_only_the_safe_set(learn):
    before = _state(learn.dls)
    with learn.no_bar():
        clean, targs = learn.get_preds()
        preds, t2 = learn.label_safe_tta(safe={'rotate': 0, 'hflip': 0})  # nothing safe: the clean predictions
        assert torch.equal(preds, clean) and torch.equal(t2, targs)
        fastai_preds, _ = learn.tta()  # fastai's tta: the training augmentations (up to 90 degrees)
        assert not torch.allclose(fastai_preds, clean, atol=1e-6)
        seen = []
        class Spy(Transform):
            order, split_idx = 50, 0
            def encodes(self, x: TensorImage): seen.append(x.shape[0]); return x
        preds, _ = learn.label_safe_tta(tfms=[Spy()], n=3)  # the only augmentation: an identity
        assert torch.allclose(preds, clean, atol=1e-6) and sum(seen) == 3 * 32  # 3 passes over 32 items
        preds, _ = learn.label_safe_tta(safe={'rotate': 15, 'shift': .1, 'darken': .6}, n=2)
        assert preds.shape == (32, 10) and torch.allclose(preds.sum(1), torch.ones(32), atol=1e-5)
        assert not torch.equal(preds, clean)
        preds, _ = learn.label_safe_tta(safe={'rotate': 15}, n=1, policy='trivial', beta=None)
        assert isinstance(preds, tuple) and preds[1].shape == (32, 10)
    assert _state(learn.dls) == before and not learn.model.training


def test_label_safe_tta_leaves_dls_when_it_raises(learn):
    before = _state(learn.dls)
    learn.model.train()
    class Boom(Transform):
        order, split_idx = 50, 0
        def encodes(self, x: TensorImage): raise RuntimeError('boom')
    with learn.no_bar(), pytest.raises(RuntimeError, match='boom'): learn.label_safe_tta(tfms=[Boom()])
    assert _state(learn.dls) == before and learn.model.training
    learn.model.eval()


def test_label_safe_tta_bad_input(learn):
    with pytest.raises(CnnTricksError, match='exactly one'): learn.label_safe_tta()
    with pytest.raises(CnnTricksError, match='exactly one'): learn.label_safe_tta(safe={}, tfms=[])
    with pytest.raises(CnnTricksError, match='n=0'): learn.label_safe_tta(safe={}, n=0)
    with pytest.raises(CnnTricksError, match='beta=2'): learn.label_safe_tta(safe={}, beta=2)
    with pytest.raises(CnnTricksError, match='policy='): learn.label_safe_tta(safe={}, policy='random')
    with pytest.raises(CnnTricksError, match='safe key'): learn.label_safe_tta(safe={'spin': 1})
    with pytest.raises(CnnTricksError, match='rotate'): learn.label_safe_tta(safe={'rotate': 999})
    with pytest.raises(CnnTricksError, match='safe='): learn.label_safe_tta(safe=[('rotate', 15)])
    with pytest.raises(CnnTricksError, match='ds_idx=5'): learn.label_safe_tta(safe={}, ds_idx=5)
    with pytest.raises(CnnTricksError, match="dl="): learn.label_safe_tta(safe={}, dl='valid')
    with pytest.raises(CnnTricksError, match="tfms"): learn.label_safe_tta(tfms=['rotate'])


def test_bounded_policy_moves_masks_with_images(batch):
    "A segmentation batch: the mask (the digit's strokes) gets its image's geometric op, never its pixel ops."
    x, _ = batch
    from fastai.torch_core import TensorMask
    mask = TensorMask((x.as_subclass(torch.Tensor)[:, 0] > .5).long())
    tfms = bounded_trivial_augment({'rotate': 30, 'shift': .2, 'darken': .5})
    torch.manual_seed(7)
    xo, mo = Pipeline(tfms, split_idx=0)((x, mask))
    assert isinstance(mo, TensorMask) and mo.dtype == torch.long
    choice = tfms[0].sampler.choice  # 0 rotate, 1 shift_x, 2 shift_y, 3 darken, 4 identity
    geo, still = choice < 3, choice >= 3
    assert torch.equal(mo[still], mask[still])
    agree = ((xo.as_subclass(torch.Tensor)[:, 0] > .5).long() == mo).float().mean((1, 2))
    assert float(agree[geo].min()) > .9 and not torch.equal(mo[geo], mask[geo])
