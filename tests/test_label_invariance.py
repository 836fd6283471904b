"""The label-preservation measure on real data: scikit-learn's digits and Fashion-MNIST (reduced sweeps and smaller
references than the defaults, so the file stays fast; the full default sweep's figures are in bench/RESULTS.md)."""
import numpy as np
import pandas as pd
import pytest
import torch

from fastai_cnntricks.core import CnnTricksError
from fastai_cnntricks.data import digits_dls, fashion_mnist_dls, FASHION_MNIST_DIR
from fastai_cnntricks.invariance import label_invariance_check, InvarianceReport, fold_ids, SWAP_MIN

FAST = dict(epochs=10, progress=False)  # references trained for 10 epochs (default 12)
SWEEP = {'rotate': [0, 15, 30, 180], 'shift': [0, .1, .2], 'darken': [1, .6, .3], 'vflip': [0, 1]}


@pytest.fixture(scope='module')
def digits(): return digits_dls(size=32, bs=128)


@pytest.fixture(scope='module')
def rep(digits):
    return label_invariance_check(digits, list(SWEEP), SWEEP, **FAST)


def test_report_has_both_axes(rep):
    assert isinstance(rep, InvarianceReport) and rep.kind == 'label' and rep.n == 1797
    for col in ('label_acc', 'label_base_acc', 'label_drop', 'label_drop_se', 'label_collisions', 'acc', 'affinity',
                'flip_rate', 'top_transitions'):
        assert col in rep.table.columns, col
    neutral = rep.table[rep.table.magnitude.isin([0, 1]) & (rep.table.tfm == 'rotate')].iloc[0]
    assert neutral.label_drop == 0 and neutral.affinity == 0
    assert rep.table.label_base_acc.min() > 0.95  # the clean heads classify clean digits


def test_label_preserving_on_digits(rep):
    safe = rep.safe_magnitudes(max_drop=0.02)
    assert safe['rotate'] >= 15 and safe['shift'] >= 0.1 and safe['darken'] <= 0.6, rep.table
    # the robustness of a clean model answers differently: a clean model is not invariant to rotation
    assert rep.safe_magnitudes(max_drop=0.02, axis='robustness')['rotate'] < 15


def test_half_turn_changes_the_label_six_and_nine_collide(rep):
    assert rep.safe_magnitudes(max_drop=0.02)['rotate'] < 180
    r180, r30 = rep.row('rotate', 180), rep.row('rotate', 30)
    assert r180['label_drop'] > 0.1 and r180['label_drop'] > r30['label_drop'] + 5 * r180['label_drop_se'], rep.table
    pairs = set(zip(*rep.transitions('rotate', 180, top=3)[['true', 'pred']].values.T))
    assert pairs & {('6', '9'), ('9', '6')}, rep.transitions('rotate', 180)
    assert '6 → 9' in r180['label_collisions'] or '9 → 6' in r180['label_collisions']


def test_per_class_half_turn(rep):
    ct = rep.class_table()
    d = ct[(ct.tfm == 'rotate') & (ct.magnitude == 180)].set_index('cls').label_drop
    assert min(d['6'], d['9']) > max(d['0'], d['1'], d['8']) + 0.2, d
    per = rep.safe_magnitudes(0.02, per_class=True)
    assert isinstance(per, pd.DataFrame) and list(per.index) == [str(i) for i in range(10)]
    assert per.loc['6', 'rotate'] < 180 and per.loc['9', 'rotate'] < 180 and per.loc['0', 'rotate'] == 180, per


def test_vertical_flip_swaps_digits_and_changes_the_label(rep):
    # a small CNN learns flipped digits apart (the label drop stays small), but a flipped 2 reads as a 5 and a
    # flipped 5 as a 2: the swap makes vflip label-changing, for the swapped classes only
    assert rep.row('vflip', 1)['label_drop'] < 0.02, rep.table
    sw = rep.swaps('vflip', 1)
    assert len(sw) and (sw[['a_to_b', 'b_to_a']] >= SWAP_MIN).all().all(), sw
    assert rep.safe_magnitudes(0.02)['vflip'] == 0 and '↔' in rep.row('vflip', 1)['label_swaps']
    per = rep.safe_magnitudes(0.02, per_class=True)['vflip']
    swapped = set(sw.a) | set(sw.b)
    assert (per[list(swapped)] == 0).all() and (per.drop(list(swapped)) == 1).any(), per
    # what stays label-safe has no swap: a shifted or darkened digit is read as a sink class, not both ways
    assert rep.swaps('shift', .1).empty and rep.swaps('darken', .6).empty and rep.swaps('rotate', 15).empty
    assert not rep.swaps('rotate', 180).empty  # 6 <-> 9


def _with_swap(rep, name, m, share):
    "The same label report with the clean reference's transition shares at (name, m) replaced by `share` (C, C)."
    k = rep._index[(name, m)]
    sw = rep.label['swap'].copy()
    sw[k] = share
    return InvarianceReport(rep.sweep, rep.keys, rep.stats, rep.ys, rep.clean_preds, rep.flips, vocab=rep.vocab,
                            label={**rep.label, 'swap': sw})


def test_only_two_way_moves_are_swaps(rep):
    C = rep.n_classes
    one_way = np.zeros((C, C)); one_way[:, 1] = .9; np.fill_diagonal(one_way, 0)  # everything reads as a 1
    r = _with_swap(rep, 'shift', .1, one_way)
    assert r.swaps('shift', .1).empty and r.safe_magnitudes(0.02)['shift'] == rep.safe_magnitudes(0.02)['shift']
    two_way = np.zeros((C, C)); two_way[3, 8] = two_way[8, 3] = SWAP_MIN
    r = _with_swap(rep, 'shift', .1, two_way)
    assert list(r.swaps('shift', .1)[['a', 'b']].iloc[0]) == ['3', '8'] and r.safe_magnitudes(0.02)['shift'] == 0
    per = r.safe_magnitudes(0.02, per_class=True)['shift']
    assert per['3'] == per['8'] == 0 and per['0'] == rep.safe_magnitudes(0.02, per_class=True)['shift']['0']
    two_way[8, 3] = SWAP_MIN - .01  # one direction short of the threshold: no swap
    assert _with_swap(rep, 'shift', .1, two_way).swaps('shift', .1).empty
    with pytest.raises(CnnTricksError, match='min_share'): rep.swaps('shift', .1, min_share=2)


def test_on_off_transform_that_changes_labels_gets_neutral():
    # an on/off transform whose drop exceeds the tolerance gets its neutral value (checked on the numbers directly)
    from fastai_cnntricks.invariance import fixed_tfm
    ft = fixed_tfm('vflip')
    assert InvarianceReport._safe_along(ft, [0, 1], np.array([0., .05]), .02, False) == 0
    assert InvarianceReport._safe_along(ft, [0, 1], np.array([0., .01]), .02, False) == 1


def test_robustness_report_keeps_its_api(rep):
    assert rep.safe_magnitudes(axis='robustness').keys() == rep.safe_magnitudes().keys()
    t = rep.transitions('rotate', 180, axis='robustness')
    assert list(t.columns) == ['true', 'pred', 'count', 'of_class', 'of_flips']
    s = rep.summary()
    assert {'label_safe_magnitude', 'safe_magnitude', 'label_collisions'} <= set(s.columns)


@pytest.mark.skipif(not FASHION_MNIST_DIR.exists(), reason='needs apt-get install dataset-fashion-mnist')
def test_fashion_hflip_preserves_the_label():
    dls = fashion_mnist_dls(size=28, n_per_class=100, n_valid=500, bs=128)
    r = label_invariance_check(dls, ['hflip'], epochs=8, progress=False)
    assert r.n == 1500
    assert r.safe_magnitudes(0.02)['hflip'] == 1, r.table
    assert r.safe_magnitudes(0.02, axis='robustness')['hflip'] == 0  # a clean model is not mirror-invariant
    assert r.train_magnitudes(0.02)['hflip'] == 1  # the label decides: the suggestion trains with mirrored clothes
    assert 'hflip' in set(r.suggestions(0.02).tfm) and len(r.suggest_tfms(0.02)) == 1


def test_folds_are_stratified():
    y = np.repeat(np.arange(3), [10, 11, 5])
    f = fold_ids(y, 2, seed=0)
    for c in range(3): assert abs((f[y == c] == 0).sum() - (f[y == c] == 1).sum()) <= 1


def test_bad_inputs(digits, rep):
    kw = dict(tfms='rotate', magnitudes=[0, 10], progress=False)
    for bad, match in ((dict(epochs=0), 'epochs'), (dict(size=4), 'size'), (dict(n_folds=1), 'n_folds'),
                       (dict(lr=-1), 'lr'), (dict(fill_mode='edge'), 'fill_mode'), (dict(n_items=0), 'n_items'),
                       (dict(progress='yes'), 'progress'), (dict(learn='model'), 'learn'),
                       (dict(bs=2000), 'bs'), (dict(tfms='twist'), 'not a known transform'),
                       (dict(magnitudes=[400]), 'rotate'), (dict(width=0), 'width')):
        with pytest.raises(CnnTricksError, match=match): label_invariance_check(digits, **{**kw, **bad})
    with pytest.raises(CnnTricksError, match='DataLoaders'): label_invariance_check([1, 2], **kw)
    with pytest.raises(CnnTricksError, match='n_folds'): label_invariance_check(digits, n_items=12, bs=4, **kw)
    with pytest.raises(CnnTricksError, match='axis'): rep.safe_magnitudes(axis='model')
    with pytest.raises(CnnTricksError, match='magnitude'): rep.transitions('rotate', 45)
    with pytest.raises(CnnTricksError, match='label axis'):
        InvarianceReport(rep.sweep, rep.keys, rep.stats, rep.ys, rep.clean_preds, rep.flips).safe_magnitudes(
            per_class=True)


def test_plot_shows_the_label_axis(rep):
    fig = rep.plot()
    assert 'label' in fig.axes[0].get_title() and len(fig.axes[0].lines) >= 3


def test_learn_gives_the_robustness_axis(digits):
    from torch import nn
    from fastai.vision.all import Learner, CrossEntropyLossFlat
    learn = Learner(digits, nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10)), loss_func=CrossEntropyLossFlat())
    sd = {k: v.clone() for k, v in learn.model.state_dict().items()}
    r = label_invariance_check(digits, 'hflip', learn=learn, n_items=600, epochs=4, progress=False)
    assert r.n == len(digits.valid_ds) and r.label['n'].sum() == 600  # robustness: the learner's validation set
    assert 'Sequential' in r.robustness_model
    assert all(torch.equal(v, learn.model.state_dict()[k]) for k, v in sd.items())


def test_random_transform_on_both_axes(digits):
    r = label_invariance_check(digits, 'noise', {'noise': [0, .1]}, n_items=400, epochs=2, progress=False)
    assert r.n == 400 and 0 <= r.row('noise', .1)['flip_rate'] <= 1 and np.isfinite(r.row('noise', .1)['label_drop'])


# ---- suggest_tfms: the label axis decides, robustness only prefers ---------------------------------------------------
def _with_robustness(rep, acc):
    "The same label report with the clean model's accuracy at each {(tfm, magnitude): accuracy} replaced."
    correct = rep.stats['correct'].copy()
    for (name, m), a in acc.items(): correct[rep._index[(name, m)]] = a * rep.n
    return InvarianceReport(rep.sweep, rep.keys, {**rep.stats, 'correct': correct}, rep.ys, rep.clean_preds,
                            rep.flips, vocab=rep.vocab, label=rep.label)


def test_train_magnitudes_stay_within_the_label_safe_range(rep):
    label, train = rep.safe_magnitudes(0.02), rep.train_magnitudes(0.02)
    assert rep.train_magnitudes(0.02, min_retained=0) == label
    for name, m in train.items():
        ft = rep.tfms[name]
        assert ft.severity(m) <= ft.severity(label[name]), (name, m, label)
        if ft.severity(label[name]) > 0: assert ft.severity(m) > 0, (name, m)  # robustness never removes a transform
    assert 0 < train['rotate'] < 180  # a half turn is never suggested on digits
    # the robustness axis is the old answer, untouched by the soft preference
    assert rep.train_magnitudes(0.02, axis='robustness') == rep.safe_magnitudes(0.02, axis='robustness')


def test_robustness_only_shortens_a_label_safe_range(rep):
    chance = 1 / rep.n_classes
    lim = rep.safe_magnitudes(0.02)
    assert lim['rotate'] >= 15 and lim['shift'] >= 0.1  # the label allows both (as test_label_preserving_on_digits)
    # a clean model at chance from rotate 15 on: held at the first label-safe magnitude, never dropped
    r = _with_robustness(rep, {('rotate', m): chance for m in (15, 30, 180)})
    assert r.retained('rotate', 15) == pytest.approx(0, abs=1e-6) and r.train_magnitudes(0.02)['rotate'] == 15
    assert r.train_magnitudes(0.02, min_retained=0)['rotate'] == lim['rotate']
    # a clean model as good as clean everywhere: the label-safe limit itself (robustness never extends it)
    clean = rep.clean_acc
    r = _with_robustness(rep, {(ft.name, m): clean for ft, ms in rep.sweep for m in ms if ft.severity(m) > 0})
    assert r.train_magnitudes(0.02) == lim
    # retained is chance-corrected: half-way between chance and clean accuracy is 0.5
    r = _with_robustness(rep, {('shift', .1): (chance + clean) / 2, ('shift', .2): chance})
    assert r.retained('shift', .1) == pytest.approx(.5)
    assert r.train_magnitudes(0.02, min_retained=.5)['shift'] == .1
    assert r.train_magnitudes(0.02, min_retained=.6)['shift'] == .1  # the floor: the first non-neutral magnitude
    with pytest.raises(CnnTricksError, match='min_retained'): rep.train_magnitudes(min_retained=1.5)
    with pytest.raises(CnnTricksError, match='fuse'): rep.suggest_tfms(fuse='yes')


def test_suggest_tfms_is_one_resampling_pass(rep):
    from fastai.vision.all import Pipeline, AffineCoordTfm
    from test_augment import count_grid_samples
    tfms = rep.suggest_tfms(0.02)
    assert sum(isinstance(t, AffineCoordTfm) for t in tfms) == 1, tfms  # rotate and shift multiplied together
    sug = rep.suggestions(0.02)
    assert {'rotate', 'shift'} <= set(sug.tfm), sug
    for r in sug.itertuples():  # within the label-safe range (darkening goes down from 1: compare severities)
        ft = rep.tfms[r.tfm]
        assert 0 < ft.severity(r.train_magnitude) <= ft.severity(r.safe_magnitude), r
    assert sug.retained.between(-.5, 1.5).all()
    x = torch.rand(8, 3, 32, 32)
    from fastai.torch_core import TensorImage
    n, out = count_grid_samples(lambda: Pipeline(tfms, split_idx=0)(TensorImage(x)))
    assert n == 1 and out.shape == x.shape
    unfused = rep.suggest_tfms(0.02, fuse=False)
    n2, _ = count_grid_samples(lambda: Pipeline(unfused, split_idx=0)(TensorImage(x)))
    assert n2 >= 2  # the counter can fail: one pass per geometric transform without fusing
