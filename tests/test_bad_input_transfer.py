"Bad input to the data and transfer entry points: a CnnTricksError naming the argument, raised before any work."
import math
import numpy as np
import pytest
import torch

from fastai_cnntricks.core import CnnTricksError
from fastai_cnntricks.data import array_dls, digits_dls, fashion_mnist_dls, folder_dls, few_shot_idxs
from fastai_cnntricks.transfer import (timm_learner, timm_model, layer_decay_lrs, DiscriminativeLR, GradualUnfreeze,
                                       ChainThaw, LPFT, L2SP, DriftMonitor, gradual_schedule, auto_base_lr)

nan, inf = math.nan, math.inf


def tiny_arrays(n=40, n_classes=4):
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (n, 16, 16), dtype=np.uint8), np.arange(n) % n_classes


@pytest.fixture(scope='module')
def learn():
    x, y = tiny_arrays()
    return timm_learner(array_dls(x, y, size=16, bs=8), 'resnet10t', pretrained=False)


# (callable, kwargs, the argument the message must name)
DATA_CASES = [
    *[(digits_dls, dict(size=v), 'size') for v in (True, 0, -1, 2.5, nan, '64')],
    *[(digits_dls, dict(n_per_class=v), 'n_per_class') for v in (0, -2, 2.5, True)],
    *[(digits_dls, dict(valid_pct=v), 'valid_pct') for v in (0, 1, 1.5, nan, True)],
    *[(digits_dls, dict(bs=v), 'bs') for v in (0, True, 2.5)],
    *[(digits_dls, dict(seed=v), 'seed') for v in (-1, 'x', 2**70)],
    (digits_dls, dict(n_per_class=3, bs=64), 'bs'),  # 30 training images: no full batch
    (fashion_mnist_dls, dict(n_valid=0), 'n_valid'),
    (fashion_mnist_dls, dict(n_per_class=-1), 'n_per_class'),
    (folder_dls, dict(path=3), 'path'),
    (folder_dls, dict(path='.', valid_pct=0), 'valid_pct'),
    (folder_dls, dict(path='.', bs=0), 'bs'),
    (few_shot_idxs, dict(labels=np.arange(10), n_per_class=0), 'n_per_class'),
    (array_dls, dict(images=tiny_arrays()[0] * 1.0, labels=tiny_arrays()[1]), 'float images'),  # 0..255 floats
    (array_dls, dict(images=tiny_arrays()[0], labels=np.arange(41) % 4), 'labels'),
    (array_dls, dict(images=tiny_arrays()[0], labels=tiny_arrays()[1], bs=64), 'bs'),
    (array_dls, dict(images=tiny_arrays()[0][0], labels=tiny_arrays()[1]), 'images'),
]

TRANSFER_CASES = [
    *[(timm_learner, dict(arch='resnet10t', n_out=v), 'n_out') for v in (-1, 0, 2.5, True)],
    (timm_learner, dict(arch=3), 'arch'),
    (timm_learner, dict(arch='resnet10t', normalize='yes'), 'normalize'),
    (timm_learner, dict(arch='resnet10t', freeze=None), 'freeze'),
    (timm_model, dict(arch='resnet10t', pretrained='nope'), 'pretrained'),
    (timm_model, dict(arch='resnet_nope'), 'arch'),
    *[(layer_decay_lrs, dict(lr=v, decay=0.7), 'lr') for v in (nan, inf, 0, -1, True)],
    *[(layer_decay_lrs, dict(lr=1e-3, decay=v), 'decay') for v in (0, 1.5, nan)],
    (DiscriminativeLR, dict(decay=0), 'decay'),
    (ChainThaw, dict(phase_epochs=[1, -1, 1]), 'phase_epochs'),
    *[(ChainThaw, dict(phase_epochs=v), 'phase_epochs') for v in (-1, nan)],
    *[(GradualUnfreeze, dict(every=v), 'every') for v in (0, nan)],
    (GradualUnfreeze, dict(start=0), 'start'),
    (GradualUnfreeze, dict(step=-1), 'step'),
    (GradualUnfreeze, dict(unit='x'), 'unit'),
    (GradualUnfreeze, dict(schedule={-1: 2}), 'schedule'),
    (GradualUnfreeze, dict(schedule={0: 0}), 'schedule'),
    *[(LPFT, dict(lp_pct=v), 'lp_pct') for v in (0, 1, nan)],
    (LPFT, dict(lp_epochs=-1), 'lp_epochs'),
    *[(L2SP, dict(alpha=v), 'alpha') for v in (inf, nan, -1)],
    (L2SP, dict(beta=inf), 'beta'),
    (DriftMonitor, dict(probe=np.zeros((2, 3, 8, 8))), 'probe'),
    (DriftMonitor, dict(probe=torch.zeros(3, 8, 8)), 'probe'),
    (DriftMonitor, dict(per_group='x'), 'per_group'),
    (gradual_schedule, dict(n_groups=0), 'n_groups'),
    (gradual_schedule, dict(n_groups=4, head_pct=0.9, full_pct=0.5), 'head_pct'),
]

RECIPE_CASES = [  # Learner methods: the model must be untouched when they raise
    *[('fine_tune_gradual', dict(epochs=v), 'epochs') for v in (0, 2.5, True)],
    *[('fine_tune_gradual', dict(epochs=1, base_lr=v), 'base_lr') for v in (inf, nan, 0, -1)],
    ('fine_tune_gradual', dict(epochs=1, decay=0), 'decay'),
    ('fine_tune_gradual', dict(epochs=1, head_pct=0.9, full_pct=0.5), 'head_pct'),
    ('fine_tune_gradual', dict(epochs=1, head_pct=nan), 'head_pct'),
    ('fine_tune_gradual', dict(epochs=1, warmup=-1), 'warmup'),
    ('fine_tune_gradual', dict(epochs=1, l2sp=inf), 'l2sp'),
    ('fine_tune_gradual', dict(epochs=1, schedule='x'), 'schedule'),
    ('fine_tune_gradual', dict(epochs=1, init_head='yes'), 'init_head'),
    ('fine_tune_gradual', dict(epochs=1, norm='frozen'), 'norm'),
    ('fine_tune_gradual', dict(epochs=1, start_epoch=-1), 'start_epoch'),
    ('probe_init_head', dict(wd=nan), 'wd'),
    ('probe_init_head', dict(max_iter=0), 'max_iter'),
    ('probe_init_head', dict(max_batches=0), 'max_batches'),
    ('group_summary', dict(show='yes'), 'show'),
]


def _call(fn, kwargs, learn):
    if fn in (timm_learner, ) or fn is auto_base_lr: return fn(learn.dls, **kwargs)
    return fn(learn, **kwargs) if fn is layer_decay_lrs else fn(**kwargs)


@pytest.mark.parametrize('fn,kwargs,name', DATA_CASES + TRANSFER_CASES,
                         ids=lambda v: getattr(v, '__name__', None) or (str(v)[:40] if isinstance(v, dict) else None))
def test_bad_argument_is_named(fn, kwargs, name, learn):
    with pytest.raises(CnnTricksError, match=name): _call(fn, kwargs, learn)


def _state(learn):
    return {k: v.clone() for k, v in learn.model.state_dict().items()}, [p.requires_grad for p in learn.model.parameters()]


@pytest.mark.parametrize('method,kwargs,name', RECIPE_CASES, ids=lambda v: str(v)[:40] if isinstance(v, dict) else None)
def test_bad_recipe_argument_leaves_the_model(method, kwargs, name, learn):
    with torch.no_grad():  # a head the probe would overwrite
        for p in learn.model.get_classifier().parameters(): p.fill_(0.5)
    before, flags = _state(learn)
    with pytest.raises(CnnTricksError, match=name): getattr(learn, method)(**kwargs)
    after, flags_after = _state(learn)
    assert flags == flags_after and all(torch.equal(before[k], after[k]) for k in before)


def test_unknown_keyword_is_a_type_error_before_the_probe(learn):
    with torch.no_grad(): learn.model.get_classifier().weight.fill_(0.5)
    with pytest.raises(TypeError, match='bogus'): learn.fine_tune_gradual(1, bogus=1)
    assert (learn.model.get_classifier().weight == 0.5).all()


def test_drift_monitor_probe_with_wrong_channels(learn):
    with pytest.raises(CnnTricksError, match='channels'):
        learn.fit(1, 1e-4, cbs=DriftMonitor(probe=torch.zeros(2, 1, 16, 16)))


def test_auto_base_lr_rejects_nan(learn):
    with pytest.raises(CnnTricksError, match='lr'): auto_base_lr(learn.dls, anchors=[(10, nan)])


def test_float_images_in_unit_range_are_scaled():
    x, y = tiny_arrays()
    dls = array_dls(x / 255., y, size=16, bs=8, valid_pct=0.25)
    img = np.array(dls.train_ds[0][0])
    assert img.max() > 100  # not black: floats in [0, 1] are scaled to 0..255
