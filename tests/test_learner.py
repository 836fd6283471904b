"`timm_learner`: normalization from timm's config, frozen body with weights, export round-trip."
import pytest
import torch
from fastai.vision.all import Normalize, load_learner

from fastai_cnntricks.core import CnnTricksError
from fastai_cnntricks.data import digits_dls
from fastai_cnntricks.transfer import timm_learner


@pytest.fixture(scope='module')
def dls(): return digits_dls(size=32, bs=16)


def test_normalization_from_timm_config():
    dls = digits_dls(size=32, bs=16)
    learn = timm_learner(dls, 'tf_efficientnet_lite0')
    norm = [t for t in learn.dls.after_batch.fs if isinstance(t, Normalize)]
    assert len(norm) == 1 and torch.allclose(norm[0].mean.flatten().cpu(), torch.tensor([0.5] * 3))
    timm_learner(dls, 'tf_efficientnet_lite0')  # a second learner does not stack another Normalize
    assert sum(isinstance(t, Normalize) for t in dls.after_batch.fs) == 1


def test_pretrained_body_starts_frozen(dls):
    learn = timm_learner(dls, 'tf_efficientnet_lite0')
    assert all(p.requires_grad for p in learn.model.classifier.parameters())
    assert not learn.model.conv_stem.weight.requires_grad
    scratch = timm_learner(digits_dls(size=32, bs=16), 'resnet10t', pretrained=False)
    assert all(p.requires_grad for p in scratch.model.parameters())


def test_export_round_trip(dls, tmp_path):
    learn = timm_learner(dls, 'resnet10t', pretrained=False, path=tmp_path)
    learn.export('model.pkl')
    loaded = load_learner(tmp_path/'model.pkl')
    img = dls.valid_ds[0][0]
    assert loaded.predict(img)[0] == learn.predict(img)[0]
    assert len(loaded.splitter(loaded.model)) == 6


def test_needs_n_out():
    with pytest.raises(CnnTricksError, match='n_out'): timm_learner(object(), 'resnet10t', pretrained=False)
