"`fine_tune_gradual` with augmentation: the probe fitted on augmented copies too, and augmentation held off early."
import math

import numpy as np
import pytest
import torch
from fastai.vision.augment import RandTransform
from fastai.torch_core import TensorImage

from fastai_cnntricks.core import CnnTricksError
from fastai_cnntricks.data import array_dls
from fastai_cnntricks.transfer import timm_learner
from fastai_cnntricks.transfer.head_init import train_features
from fastai_cnntricks.transfer.recipes import AugmentFrom


class CountingNoise(RandTransform):
    "A training-only batch transform that adds noise and counts the training batches it touched."
    order, split_idx = 90, 0

    def __init__(self):
        super().__init__(p=1.)
        self.calls = 0

    def encodes(self, x: TensorImage):
        self.calls += 1
        return x + 0.3 * torch.randn_like(x)


def tiny(batch_tfms=None, n=32):
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 255, (n + 8, 16, 16), dtype=np.uint8), np.arange(n + 8) % 4
    dls = array_dls(x, y, size=16, valid_idxs=list(range(n, n + 8)), bs=8, batch_tfms=batch_tfms, num_workers=0)
    return timm_learner(dls, 'resnet10t', pretrained=False)


def test_train_features_appends_augmented_copies():
    noise = CountingNoise()
    learn = tiny([noise])
    x0, y0 = train_features(learn)
    x2, y2 = train_features(learn, aug_copies=2)
    n = len(learn.dls.train_ds)
    assert x0.shape[0] == n and x2.shape[0] == 3 * n
    assert torch.allclose(x2[:n], x0, atol=1e-5)  # the clean pass comes first, without the random transform
    assert torch.equal(y2, y0.repeat(3))
    assert not torch.allclose(x2[n:2 * n], x0, atol=1e-3) and not torch.allclose(x2[n:2 * n], x2[2 * n:], atol=1e-3)
    assert noise.calls == 2 * math.ceil(n / 8)  # only the copies ran it


def test_probe_on_copies_differs_and_keeps_the_l2_of_the_images():
    learn = tiny([CountingNoise()])
    learn.probe_init_head()
    w0 = learn.model.get_classifier().weight.detach().clone()
    learn.probe_init_head(aug_copies=3)
    w3 = learn.model.get_classifier().weight.detach().clone()
    assert not torch.allclose(w0, w3, atol=1e-4)
    # no random transform: the copies are the clean images, so both fits solve the same problem (the L2 stays 1/n for
    # the n images, not 1/(4n)); L-BFGS stops on a flat optimum, so compare the objective, not the weights
    learn_clean = tiny()
    x, y = (t.as_subclass(torch.Tensor) for t in train_features(learn_clean))
    clf = learn_clean.model.get_classifier()
    def objective():
        w, b = clf.weight.detach(), clf.bias.detach()
        return float(torch.nn.functional.cross_entropy(x @ w.T + b, y) + w.pow(2).sum() / len(y) / 2)
    learn_clean.probe_init_head(); a = objective()
    learn_clean.probe_init_head(aug_copies=3); b = objective()
    learn_clean.probe_init_head(wd=1 / (4 * len(y))); weaker = objective()
    assert b == pytest.approx(a, rel=1e-5) and weaker > a * (1 + 1e-4)  # the weaker prior is another optimum


def test_aug_from_holds_the_augmentation_off_then_on():
    noise = CountingNoise()
    learn = tiny([noise])
    per_epoch = len(learn.dls.train)
    learn.fine_tune_gradual(2, aug_from=0.5, probe_copies=0)
    assert noise.calls == per_epoch  # the second epoch only
    assert learn.dls.train.dataset.split_idx == 0  # left as found
    noise.calls = 0
    learn.fine_tune_gradual(2)  # default: augmentation from the start
    assert noise.calls == 2 * per_epoch


def test_aug_from_restores_the_pipeline_when_the_fit_raises():
    learn = tiny([CountingNoise()])

    class Boom(AugmentFrom):
        order = 50
        def before_batch(self): raise RuntimeError('boom')

    with pytest.raises(RuntimeError, match='boom'): learn.fine_tune_gradual(2, aug_from=0.5, cbs=Boom(0.))
    assert learn.dls.train.dataset.split_idx == 0


def test_fine_tune_gradual_fits_the_probe_on_copies():
    noise = CountingNoise()
    learn = tiny([noise])
    learn.fine_tune_gradual(1, probe_copies=2)
    assert noise.calls == 2 * math.ceil(len(learn.dls.train_ds) / 8) + len(learn.dls.train)


@pytest.mark.parametrize('kwargs,name', [
    (dict(probe_copies=-1), 'probe_copies'), (dict(probe_copies=1.5), 'probe_copies'),
    (dict(probe_copies=True), 'probe_copies'), (dict(probe_copies=2, init_head=False), 'probe_copies'),
    (dict(aug_from=1.5), 'aug_from'), (dict(aug_from=math.nan), 'aug_from'), (dict(aug_from='late'), 'aug_from')])
def test_bad_arguments_are_named_before_the_probe(kwargs, name):
    learn = tiny([CountingNoise()])
    with torch.no_grad(): learn.model.get_classifier().weight.fill_(0.5)
    with pytest.raises(CnnTricksError, match=name): learn.fine_tune_gradual(1, **kwargs)
    assert (learn.model.get_classifier().weight == 0.5).all()


def test_probe_init_head_copies_need_the_training_loader():
    learn = tiny([CountingNoise()])
    with pytest.raises(CnnTricksError, match='aug_copies'): learn.probe_init_head(aug_copies=-1)
    with pytest.raises(CnnTricksError, match='aug_copies'): learn.probe_init_head(aug_copies=1, dl=learn.dls.valid)
