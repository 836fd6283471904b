"""The label-invariance check on real data (scikit-learn's digits), against independent references:
torch.rot90 / torch.flip for exact 180° rotation and flips, fastai's own validation for clean accuracy."""
import pytest
import torch
from torch import nn
from fastai.vision.all import (set_seed, Learner, TfmdDL, TensorImage, CrossEntropyLossFlat,
                               Rotate, accuracy)

from fastai_cnntricks.core import CnnTricksError, model_snapshot
from fastai_cnntricks.data import digits_dls
from fastai_cnntricks.transfer import timm_learner
from fastai_cnntricks.augment import FlipVertical
from fastai_cnntricks.invariance import FixedTfm, DiversityMonitor, assert_label_invariant
from fastai_cnntricks.reference import reference_learner

SIZE = 24


@pytest.fixture(scope='module')
def learn():
    "resnet10t trained from scratch on digits without flips or rotations (about 99% clean accuracy)."
    set_seed(0, reproducible=True)
    dls = digits_dls(size=SIZE, bs=64)
    learn = timm_learner(dls, 'resnet10t', pretrained=False)
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(4, 5e-3)
    return learn


@pytest.fixture(scope='module')
def rep_and_state(learn):
    learn.model.train()  # left in train mode: the check must evaluate in eval mode and put this back
    before = model_snapshot(learn.model), {k: v.clone() for k, v in learn.model.state_dict().items()}
    rep = learn.invariance_check(['rotate', 'hflip', 'vflip'], {'rotate': [0, 2, 4, 6, 8, 10, 12, 15, 20, 30, 180]},
                                 progress=False)
    after = model_snapshot(learn.model), learn.model.state_dict()
    learn.model.eval()
    return rep, before, after


@pytest.fixture(scope='module')
def rep(rep_and_state): return rep_and_state[0]


def _acc_under(learn, f):
    "Accuracy of the model on the validation set with `f` applied to the normalized batches (independent path)."
    correct = n = 0
    with torch.no_grad():
        learn.model.eval()
        for xb, yb in learn.dls.valid:
            correct += (learn.model(f(xb)).argmax(1) == yb).sum().item(); n += len(yb)
    return correct / n


def test_clean_accuracy_matches_fastai(learn, rep):
    assert rep.clean_acc == pytest.approx(float(learn.validate()[1]), abs=1e-6)
    assert rep.clean_acc > 0.97


def test_exact_transforms_match_independent_references(learn, rep):
    # 180° rotation and flips sample pixel centres exactly, so they equal torch.rot90 / torch.flip
    # (both commute with the per-channel Normalize the model sees).
    for name, m, f in (('rotate', 180, lambda x: torch.rot90(x, 2, (2, 3))), ('hflip', 1, lambda x: x.flip(3)),
                       ('vflip', 1, lambda x: x.flip(2))):
        assert rep.row(name, m)['acc'] == pytest.approx(_acc_under(learn, f), abs=1.5 / rep.n), name


def test_flips_and_half_turn_are_flagged(rep):
    for name, m in (('vflip', 1), ('hflip', 1), ('rotate', 180)):
        r = rep.row(name, m)
        assert r['affinity'] < -0.2 and r['flip_rate'] > 0.2, (name, r)
        assert 0 < r['js'] <= 1
    assert rep.row('rotate', 0)['flip_rate'] == 0 and rep.row('rotate', 0)['affinity'] == 0


def test_half_turn_turns_six_into_nine_and_back(rep):
    t = rep.transitions('rotate', 180, top=5)
    pairs = set(zip(t.true, t.pred))
    assert ('6', '9') in pairs and ('9', '6') in pairs, t
    assert '6 → 9' in rep.row('rotate', 180)['top_transitions'] or '9 → 6' in rep.row('rotate', 180)['top_transitions']
    # shares are of the true class's items: never above 1, and the counts add up to at most the flips
    assert (t.of_class <= 1).all() and t['count'].sum() <= rep.row('rotate', 180)['flip_rate'] * rep.n + 1e-9


def test_safe_rotation_at_two_points(rep):
    safe = rep.safe_magnitudes(max_drop=0.02)
    assert 3 <= safe['rotate'] <= 30, rep.table[rep.table.tfm == 'rotate']
    assert safe['hflip'] == 0 and safe['vflip'] == 0
    interp = rep.safe_magnitudes(0.02, interpolate=True)['rotate']
    assert safe['rotate'] <= interp <= 30
    # monotone in the tolerance
    assert rep.safe_magnitudes(0.0)['rotate'] <= safe['rotate'] <= rep.safe_magnitudes(0.2)['rotate']


def test_suggested_transforms_follow_safe_magnitudes(rep):
    tfms = rep.suggest_tfms(0.02)
    rot = [t for t in tfms if isinstance(t, Rotate)]
    assert len(rot) == 1 and not any('Flip' in type(t).__name__ for t in tfms)


def test_model_left_exactly_as_found(rep_and_state):
    _, (snap0, sd0), (snap1, sd1) = rep_and_state
    assert snap0 == snap1
    assert all(torch.equal(sd0[k], sd1[k]) for k in sd0)


def test_show_flips_redraws_the_flipped_items(learn, rep):
    name, k = rep._key('rotate', 180)
    items = rep.flips[k][:4]
    clean, aug = rep.redraw(k, [i for i, _ in items])
    for i, pred in items:
        assert torch.allclose(aug[i], torch.rot90(clean[i], 2, (1, 2)), atol=1e-5)
        assert pred != rep.clean_preds[i]
    fig = rep.show_flips('rotate', 180, k=4)
    assert len([a for a in fig.axes if a.images]) == 8


def test_plot(rep):
    import matplotlib.pyplot as plt
    fig = rep.plot()
    assert len(fig.axes[0].lines) >= 3
    assert fig.number not in plt.get_fignums()  # closed and returned: a notebook shows it once


def test_assert_label_invariant(learn):
    assert_label_invariant(learn, 'rotate', 0.5, max_flip_rate=0.02, n_items=128)
    with pytest.raises(AssertionError, match='→'):
        assert_label_invariant(learn, 'rotate', 180, max_flip_rate=0.02, n_items=128)


def test_custom_and_wing_transforms(learn):
    # a transform with apply_fixed from the augment wing, and a plain function: vflip twice is the identity
    rep = learn.invariance_check([FlipVertical(), lambda x, m: x.flip(2).flip(2)],
                                 {'FlipVertical': [1], '<lambda>': [1]}, n_items=64, progress=False)
    assert rep.row('<lambda>', 1)['flip_rate'] == 0
    assert rep.row('FlipVertical', 1)['flip_rate'] > 0.2


def test_bad_inputs(learn):
    with pytest.raises(CnnTricksError, match='rotate'): learn.invariance_check('rotate', [400], progress=False)
    with pytest.raises(CnnTricksError, match='on/off'): learn.invariance_check('hflip', [0.5], progress=False)
    with pytest.raises(CnnTricksError, match='not a known transform'): learn.invariance_check('twist', progress=False)
    with pytest.raises(CnnTricksError, match='n_items'): learn.invariance_check('rotate', n_items=0, progress=False)
    with pytest.raises(CnnTricksError, match='changed the batch shape'):
        learn.invariance_check(FixedTfm('crop', lambda x, m: x[..., 1:, 1:]), [1], n_items=8, progress=False)
    empty = TfmdDL([], bs=4)
    with pytest.raises(CnnTricksError, match='empty'): learn.invariance_check('rotate', dl=empty, progress=False)
    with pytest.raises(CnnTricksError, match='DataLoader'): learn.invariance_check('rotate', dl=[1, 2], progress=False)
    # not a single-label classifier: one output per item
    reg = Learner(learn.dls, nn.Sequential(nn.Flatten(), nn.LazyLinear(1)), loss_func=nn.MSELoss())
    with pytest.raises(CnnTricksError, match='classifier'): reg.invariance_check('rotate', [10], n_items=8, progress=False)


def test_diversity_monitor_logs_ratio():
    "diversity = loss on augmented / loss on clean training items, checked against torch's flip on a clean copy."
    set_seed(1)
    def tiny(): return nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 10))  # not flip-invariant by construction
    ce = nn.CrossEntropyLoss(reduction='sum')
    for tfms in ([FlipVertical(p=1.)], None):
        dls = digits_dls(size=16, bs=32, n_per_class=6, batch_tfms=tfms)
        mon = DiversityMonitor(n_batches=2)
        l = Learner(dls, tiny(), loss_func=CrossEntropyLossFlat(), metrics=accuracy, cbs=mon)
        l.model.train()
        with l.no_bar(), l.no_logging(): l.fit(2, 1e-2)
        assert 'diversity' in l.recorder.metric_names
        col = l.recorder.metric_names.index('diversity') - 1
        assert [v[col] for v in l.recorder.values] == pytest.approx(mon.values)
        assert not any(getattr(m, 'name', '') == 'diversity' for m in l.metrics)
        assert l.model.training is False or all(m.training for m in l.model.modules())  # mode left as fastai leaves it
        clean = digits_dls(size=16, bs=32, n_per_class=6).train.new(shuffle=False, drop_last=False)
        f = (lambda x: x.flip(2)) if tfms else (lambda x: x)
        with torch.no_grad():
            l.model.eval()
            xy = [(x.as_subclass(torch.Tensor), y.as_subclass(torch.Tensor)) for x, y in clean][:2]
            ref = sum(ce(l.model(f(x)), y) for x, y in xy) / sum(ce(l.model(x), y) for x, y in xy)
        assert mon.values[-1] == pytest.approx(float(ref), rel=1e-5)
        if not tfms: assert mon.values == pytest.approx([1., 1.])


def test_reference_learner_is_a_linear_probe():
    dls = digits_dls(size=32, bs=64)
    tfms_before = [list(dl.after_batch.fs) for dl in dls.loaders]
    ref = reference_learner(dls, n_batches=4)
    # the embedded weights need ImageNet's Normalize: the learner's copy of the dls gets it, the user's does not
    assert [list(dl.after_batch.fs) for dl in dls.loaders] == tfms_before
    assert any(type(t).__name__ == 'Normalize' for t in ref.dls.after_batch.fs)
    body0 = {k: v.clone() for k, v in ref.model.state_dict().items() if not k.startswith('classifier')}
    assert float(ref.validate()[1]) > 0.6  # frozen ImageNet features + linear classifier, before any training
    from fastai_cnntricks.transfer.weights import timm_model
    fresh = timm_model('tf_efficientnet_lite0', 'embedded', n_out=10).state_dict()
    assert all(torch.equal(v, fresh[k]) for k, v in body0.items())


def test_transforms_apply_before_normalize(learn):
    "With Normalize in after_batch the transforms run in image space and Normalize after them: same as fastai's path."
    from fastai.vision.all import Normalize
    dls = digits_dls(size=SIZE, bs=64, batch_tfms=[Normalize.from_stats([.2, .3, .4], [.5, .6, .7])])
    l2 = Learner(dls, learn.model, metrics=accuracy, loss_func=CrossEntropyLossFlat())
    rep = l2.invariance_check(['rotate', 'darken'], {'rotate': [180], 'darken': [0.]}, progress=False)
    assert rep.clean_acc == pytest.approx(float(l2.validate()[1]), abs=1e-6)
    assert rep.row('rotate', 180)['acc'] == pytest.approx(_acc_under(l2, lambda x: torch.rot90(x, 2, (2, 3))), abs=1.5 / rep.n)
    # darkening to black happens before Normalize: every image becomes the normalized black image
    black = dls.after_batch.fs[-1](TensorImage(torch.zeros(1, 3, SIZE, SIZE)))
    pred_black = learn.model.eval()(black).argmax(1).item()
    assert rep.row('darken', 0.)['acc'] == pytest.approx(float((rep.ys == pred_black).mean()), abs=1e-9)
