"L2-SP, DriftMonitor, the probe head init and fine_tune_gradual, against independent references."
import numpy as np
import pytest
import torch
from torch import nn
from fastai.vision.all import Learner, CrossEntropyLossFlat, accuracy, set_seed

from fastai_cnntricks.core import CnnTricksError
from fastai_cnntricks.transfer import (timm_splitter, L2SP, DriftMonitor, linear_cka, body_features, timm_learner,
                                       GradualUnfreeze, NormPolicy, auto_base_lr,
                                       AUTO_LR_ANCHORS)
from test_transfer_schedules import small_digits, make_learner, fit


@pytest.fixture(scope='module')
def dls(): return small_digits()


def test_linear_cka_reference():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 8, generator=g)
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=g))
    assert linear_cka(x, 3 * x @ q + 1) == pytest.approx(1.0, abs=1e-9)  # invariant to rotation, scale, shift
    y = torch.randn(50, 8, generator=g)
    # independent formula: HSIC with centred Gram matrices
    h = torch.eye(50, dtype=torch.float64) - 1 / 50
    kx, ky = h @ (x.double() @ x.double().T) @ h, h @ (y.double() @ y.double().T) @ h
    ref = float((kx * ky).sum() / ((kx * kx).sum().sqrt() * (ky * ky).sum().sqrt()))
    assert linear_cka(x, y) == pytest.approx(ref, rel=1e-9)
    assert linear_cka(x, y) < 0.5


def test_l2sp_penalty_matches_definition(dls):
    learn = make_learner(dls)
    learn.unfreeze()
    cb = L2SP(alpha=0.3, beta=0.2)
    with pytest.raises(CnnTricksError, match='no recorded start'): cb.penalty(learn.model)
    cb.record_start(learn.model)
    assert float(cb.penalty(learn.model)) == pytest.approx(0.2 / 2 * sum(float(p.pow(2).sum()) for p in learn.model[1].parameters()), rel=1e-5)
    with torch.no_grad():
        for p in learn.model[0].parameters(): p.add_(0.01)
    body_sq = sum(p.numel() * 0.01 ** 2 for p in learn.model[0].parameters())
    head_sq = sum(float(p.pow(2).sum()) for p in learn.model[1].parameters())
    assert float(cb.penalty(learn.model)) == pytest.approx(0.3 / 2 * body_sq + 0.2 / 2 * head_sq, rel=1e-4)


def test_l2sp_keeps_weights_closer_to_start(dls):
    dists = {}
    for alpha in (0., 1.):
        learn = make_learner(dls); learn.unfreeze()
        w0 = [p.detach().clone() for p in learn.model[0].parameters()]
        fit(learn, 2, lr=3e-2, cbs=[L2SP(alpha=alpha, beta=0.)] if alpha else [], wd=0.)
        dists[alpha] = sum(float((p - q).pow(2).sum()) for p, q in zip(learn.model[0].parameters(), w0))
    assert dists[1.] < 0.8 * dists[0.]


def test_drift_monitor_values_in_recorder(dls):
    learn = make_learner(dls)
    src = small_digits(n_train=2, n_valid=30).valid
    mon = DriftMonitor(source_dl=src)
    w0 = [p.detach().clone() for p in learn.model[0][0].parameters()]
    fit(learn, 2, cbs=[GradualUnfreeze(every=1, norm=NormPolicy(affine=False)), mon])
    names = learn.recorder.metric_names
    for k in ('drift_g0', 'drift_g3', 'feat_cka', 'source_acc'): assert k in names
    last = mon.history[-1]
    assert last['drift_g0'] == 0.0 and last['drift_g3'] > 0  # group 0 never thawed in 2 epochs; the head moved
    assert all(torch.equal(a, b) for a, b in zip(w0, learn.model[0][0].parameters()))
    assert 0 < last['feat_cka'] <= 1 + 1e-9
    # source accuracy = the model's own accuracy on that DataLoader
    with learn.no_bar(): ref = learn.validate(dl=src)[1]
    assert last['source_acc'] == pytest.approx(float(ref), abs=1e-6)
    assert not any('drift' in getattr(m, 'name', '') for m in learn.metrics)  # metrics put back after the fit


def test_probe_init_head_matches_logistic_regression():
    from sklearn.linear_model import LogisticRegression
    dls = small_digits(size=32, n_train=10, n_valid=60)
    learn = timm_learner(dls, 'tf_efficientnet_lite0', pretrained='embedded')
    learn.probe_init_head()  # default L2: scikit-learn's C = 1
    with learn.no_bar(): acc = float(learn.validate()[1])
    from fastai_cnntricks.transfer.head_init import train_features
    xtr, ytr = train_features(learn); xva, yva = train_features(learn, dls.valid)
    ref = LogisticRegression(C=1., max_iter=3000).fit(xtr.numpy(), ytr.numpy())
    ref_acc = float((ref.predict(xva.numpy()) == yva.numpy()).mean())
    assert acc > 0.5 and abs(acc - ref_acc) <= 0.05
    head = learn.model.classifier  # the same strictly convex problem: the same optimum, so the same probabilities
    with torch.no_grad(): probs = (xva.float() @ head.weight.T + head.bias).softmax(1).numpy()
    assert abs(probs - ref.predict_proba(xva.numpy())).max() < 0.02


def test_fine_tune_gradual_runs_and_ends_all_trainable():
    dls = small_digits(size=32, n_train=4, n_valid=20)
    learn = timm_learner(dls, 'tf_efficientnet_lite0', pretrained='embedded')
    with learn.no_bar(), learn.no_logging(): learn.fine_tune_gradual(2)
    assert all(p.requires_grad for p in learn.model.parameters())
    pos, lrs, tr = learn.schedule_log.as_arrays()
    assert tr[0, :-1].max() < 1 and tr[0, -1] == 1 and (tr[-1] == 1).all()
    assert lrs[-1, 0] < lrs[-1, -1]  # discriminative: the stem's LR below the head's
    with pytest.raises(CnnTricksError, match='epochs'): learn.fine_tune_gradual(0)
    auto = auto_base_lr(dls)  # 4 images per class: below the first anchor, along the first segment's slope
    assert auto == pytest.approx(1.9e-5 * 0.4 ** 1.5, rel=0.01) and auto * 0.5 < lrs[:, -1].max() <= auto * 1.0001


def test_auto_base_lr_scales_with_images_per_class():
    from types import SimpleNamespace
    dls = lambda n, c: SimpleNamespace(train_ds=range(n), c=c)
    (n0, lr0), (n1, lr1), (n2, lr2), (n3, lr3) = AUTO_LR_ANCHORS
    assert auto_base_lr(dls(60000, 10)) == auto_base_lr(dls(10 * n3, 10)) == lr3  # the last anchor's LR above it
    for n, lr in AUTO_LR_ANCHORS: assert auto_base_lr(dls(10 * n, 10)) == pytest.approx(lr)
    slope = np.log(lr2 / lr1) / np.log(n2 / n1)  # log-log: a power law between neighbouring anchors
    assert auto_base_lr(dls(540, 10)) == pytest.approx(lr1 * (54 / n1) ** slope)
    ks = np.arange(1, 2000)
    lrs = np.array([auto_base_lr(dls(10 * k, 10)) for k in ks])
    steepest = max(abs(np.log(b[1] / a[1]) / np.log(b[0] / a[0])) for a, b in zip(AUTO_LR_ANCHORS, AUTO_LR_ANCHORS[1:]))
    assert (np.abs(np.diff(np.log(lrs))) <= steepest * np.diff(np.log(ks)) + 1e-9).all()  # continuous: no jumps
    assert lrs.argmax() == n2 - 1  # rises to 100 per class, then falls
    assert auto_base_lr(dls(250, 10), anchors=[(25, 1e-3)]) == 1e-3
    assert auto_base_lr(dls(50, 10), anchors=[(10, 1e-4), (20, 4e-4)]) == pytest.approx(1e-4 / 4)


@pytest.mark.parametrize('anchors', [(), [(10, 1e-3), (10, 2e-3)], [(20, 1e-3), (10, 2e-3)], [(10, -1e-3)],
                                     [(0, 1e-3)], [(10, float('nan'))], [(True, 1e-3)], [10, 1e-3], 'x', [(10, 1e-3, 1)]])
def test_auto_base_lr_rejects_bad_anchors(anchors):
    from types import SimpleNamespace
    with pytest.raises(CnnTricksError, match='anchors'): auto_base_lr(SimpleNamespace(train_ds=range(50), c=10), anchors=anchors)


