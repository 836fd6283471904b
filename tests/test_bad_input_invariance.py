"""Bad and edge inputs to the invariance check, its report, `reference_learner`, `run_demo` and the CLI: each gets a
`CnnTricksError` naming the argument (or a `TypeError` for an unknown keyword) before any work, and the invariance
check leaves the model and the DataLoaders' transforms exactly as found, also in half precision."""
import copy

import pytest
import torch
from torch import nn
from fastai.vision.all import Learner, CrossEntropyLossFlat, Normalize

from fastai_cnntricks.core import CnnTricksError, model_snapshot
from fastai_cnntricks.data import digits_arrays, array_dls
from fastai_cnntricks.invariance import (InvarianceReport, DiversityMonitor, assert_label_invariant,
                                         quick_invariance_check)
from fastai_cnntricks.reference import reference_learner
from fastai_cnntricks.demo import run_demo
from fastai_cnntricks.cli import main

NAN, INF = float('nan'), float('inf')


def tiny_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 16 * 16, 10))


@pytest.fixture(scope='module')
def learn():
    "An untrained tiny CNN on 48 real digits, with Normalize, grads held and mixed train/eval modes."
    x, y = digits_arrays()
    dls = array_dls(x[:48], y[:48], size=16, valid_idxs=list(range(16, 48)), bs=16, num_workers=0,
                    batch_tfms=[Normalize.from_stats([.5] * 3, [.25] * 3)])
    learn = Learner(dls, tiny_model(), loss_func=CrossEntropyLossFlat())
    xb, yb = dls.one_batch()
    learn.loss_func(learn.model(xb), yb).backward()  # grads present, as mid-training
    learn.model.train()
    learn.model[1].eval()
    return learn


@pytest.fixture(scope='module')
def rep(learn):
    return learn.invariance_check(['rotate', 'hflip'], {'rotate': [0, 10, 180]}, progress=False)


def state(learn):
    "Everything the check promises to leave alone: weights, grads (values and layout), modes, flags, hooks, dls."
    m = learn.model
    return dict(snap=model_snapshot(m), weights={k: v.clone() for k, v in m.state_dict().items()},
                grads=[None if p.grad is None else (p.grad.clone(), p.grad.stride()) for p in m.parameters()],
                tfms=[(dl.after_batch, list(dl.after_batch.fs), dl.after_batch.split_idx) for dl in learn.dls.loaders],
                dtype=[p.dtype for p in m.parameters()])


def assert_same_state(a, b):
    assert a['snap'] == b['snap'] and a['dtype'] == b['dtype']
    assert all(torch.equal(v, b['weights'][k]) for k, v in a['weights'].items())
    for ga, gb in zip(a['grads'], b['grads']):
        assert (ga is None) == (gb is None)
        if ga is not None: assert torch.equal(ga[0], gb[0]) and ga[1] == gb[1]
    assert all(pa is pb and fa == fb and sa == sb for (pa, fa, sa), (pb, fb, sb) in zip(a['tfms'], b['tfms']))


CHECK_CASES = [
    (dict(seed='x'), 'seed'), (dict(seed=-1), 'seed'), (dict(seed=True), 'seed'), (dict(seed=2.5), 'seed'),
    (dict(seed=2**70), 'seed'),
    (dict(magnitudes={'rotate': [NAN]}), r"magnitudes\['rotate'\]"),
    (dict(magnitudes={'rotate': [INF]}), r"magnitudes\['rotate'\]"),
    (dict(magnitudes={'rotate': [True]}), r"magnitudes\['rotate'\]"),
    (dict(magnitudes={'rotate': [400]}), r"magnitudes\['rotate'\]"),
    (dict(magnitudes={'rotate': 'x'}), r"magnitudes\['rotate'\]"),
    (dict(magnitudes='big'), 'magnitudes'),
    (dict(tfms='hflip', magnitudes=[0.5]), 'on/off'),
    (dict(n_items=0), 'n_items'), (dict(n_items=-3), 'n_items'), (dict(n_items=2.5), 'n_items'),
    (dict(n_items=True), 'n_items'),
    (dict(keep_flips=-1), 'keep_flips'), (dict(keep_flips=1.5), 'keep_flips'),
    (dict(progress='yes'), 'progress'), (dict(fill_mode='mirror'), 'fill_mode'),
    (dict(dl=[1, 2]), 'dl'), (dict(dl='valid'), 'dl'),
    (dict(tfms='twist'), 'tfm'), (dict(tfms=[]), 'tfms'), (dict(tfms=42), 'tfms'),
]


@pytest.mark.parametrize('kwargs, match', CHECK_CASES)
def test_invariance_check_rejects_before_work_and_leaves_state(learn, kwargs, match):
    kwargs = {'tfms': ['rotate'], 'magnitudes': {'rotate': [10]}, 'progress': False, **kwargs}
    before = state(learn)
    with pytest.raises(CnnTricksError, match=match): learn.invariance_check(**kwargs)
    assert_same_state(before, state(learn))


def test_invariance_check_unknown_keyword(learn):
    with pytest.raises(TypeError): learn.invariance_check('rotate', magnitude=[10])
    with pytest.raises(CnnTricksError, match='dl'): learn.invariance_check('rotate', dl=learn.dls)  # not one loader


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_precision_runs_in_the_models_dtype_and_leaves_state(learn, rep, dtype):
    half = Learner(learn.dls, copy.deepcopy(learn.model).to(dtype), loss_func=CrossEntropyLossFlat())
    before = state(half)
    r = half.invariance_check(['rotate', 'hflip'], {'rotate': [0, 10, 180]}, progress=False)
    assert_same_state(before, state(half))
    # same predictions up to rounding: flip rates within a few items of the float32 model's
    assert (r.table.flip_rate - rep.table.flip_rate).abs().max() <= 3 / rep.n
    assert r.clean_acc == pytest.approx(rep.clean_acc, abs=3 / rep.n)


def test_successful_check_leaves_state(learn):
    before = state(learn)
    learn.invariance_check(['rotate', 'noise'], {'rotate': [10], 'noise': [.1]}, progress=False)
    assert_same_state(before, state(learn))


REPORT_CASES = [
    ('safe_magnitudes', dict(max_drop=NAN), 'max_drop'), ('safe_magnitudes', dict(max_drop=-0.1), 'max_drop'),
    ('safe_magnitudes', dict(max_drop=True), 'max_drop'), ('safe_magnitudes', dict(interpolate='yes'), 'interpolate'),
    ('show_flips', dict(tfm='rotate', magnitude=180, k=0), 'k='),
    ('show_flips', dict(tfm='rotate', magnitude=180, k=2.5), 'k='),
    ('show_flips', dict(tfm='rotate', magnitude=180, ncols=0), 'ncols'),
    ('show_flips', dict(tfm='twist', magnitude=180), 'tfm'),
    ('row', dict(tfm='rotate', magnitude=7), 'magnitude'), ('row', dict(tfm='rotate', magnitude=NAN), 'magnitude'),
    ('row', dict(tfm=None, magnitude=10), 'tfm'),
    ('transitions', dict(tfm='rotate', magnitude=180, top=0), 'top'),
    ('plot', dict(max_drop=INF), 'max_drop'), ('plot', dict(tfms=['twist']), 'tfm'),
    ('suggest_tfms', dict(max_drop='x'), 'max_drop'), ('summary', dict(max_drop=2), 'max_drop'),
    ('suggestions', dict(max_drop=-1), 'max_drop'),
]


@pytest.mark.parametrize('method, kwargs, match', REPORT_CASES)
def test_report_methods_reject(rep, method, kwargs, match):
    with pytest.raises(CnnTricksError, match=match): getattr(rep, method)(**kwargs)


def test_report_without_data_says_so(rep):
    bare = InvarianceReport(rep.sweep, rep.keys, rep.stats, rep.ys, rep.clean_preds, rep.flips)
    name, m = next((n, m) for n, m in (('hflip', 1), ('rotate', 180)) if bare.row(n, m)['flip_rate'] > 0)
    with pytest.raises(CnnTricksError, match='keeps no data'): bare.show_flips(name, m)


@pytest.mark.parametrize('call, match', [
    (lambda l: assert_label_invariant(l, 'rotate', 10, max_flip_rate=1.5), 'max_flip_rate'),
    (lambda l: assert_label_invariant(l, 'rotate', 10, max_flip_rate=NAN), 'max_flip_rate'),
    (lambda l: assert_label_invariant('learn', 'rotate', 10), 'learn'),
    (lambda l: assert_label_invariant(l, 'rotate', INF), r"magnitudes\['rotate'\]"),
    (lambda l: quick_invariance_check(None), 'learn'),
    (lambda l: quick_invariance_check(l, n_items=0), 'n_items'),
    (lambda l: DiversityMonitor(n_batches=0), 'n_batches'),
    (lambda l: DiversityMonitor(metric_name=3), 'metric_name'),
    (lambda l: reference_learner('dls'), 'dls'),
    (lambda l: reference_learner(l.dls, n_batches=0), 'n_batches'),
    (lambda l: reference_learner(l.dls, pretrained=False, epochs=-1), 'epochs'),
    (lambda l: reference_learner(l.dls, pretrained=False, epochs=1.5), 'epochs'),
    (lambda l: reference_learner(l.dls, lr=NAN), 'lr'),
    (lambda l: reference_learner(l.dls, arch=3), 'arch'),
])
def test_other_entry_points_reject(learn, call, match):
    before = state(learn)
    with pytest.raises(CnnTricksError, match=match): call(learn)
    assert_same_state(before, state(learn))


@pytest.fixture
def no_training(monkeypatch):
    "Any fit (or data loading for the demo) fails the test: the checks must come first."
    def boom(*a, **k): raise AssertionError('work started before the arguments were checked')
    monkeypatch.setattr(Learner, 'fit', boom)
    monkeypatch.setattr('fastai_cnntricks.demo.demo_dls', boom)


@pytest.mark.parametrize('kwargs, match', [
    (dict(seed=2**70), 'seed'), (dict(seed='x'), 'seed'), (dict(epochs=0), 'epochs'), (dict(epochs=2.5), 'epochs'),
    (dict(n_per_class=0), 'n_per_class'), (dict(n_per_class=-2), 'n_per_class'), (dict(size=2.5), 'size'),
    (dict(size=0), 'size'), (dict(quiet='no'), 'quiet'), (dict(pretrained=3), 'pretrained'),
    (dict(data='/no/such/dir'), "neither 'digits'"), (dict(data=7), 'data'), (dict(arch=None), 'arch'),
    (dict(arch='resnet_nope'), 'arch'),
])
def test_run_demo_rejects_before_any_work(no_training, kwargs, match):
    with pytest.raises(CnnTricksError, match=match): run_demo(**kwargs)


def test_run_demo_rejects_an_existing_file_as_out(no_training, tmp_path):
    (tmp_path/'f').write_text('x')
    with pytest.raises(CnnTricksError, match='out='): run_demo(out=tmp_path/'f')
    with pytest.raises(TypeError): run_demo(epoch=3)


@pytest.mark.parametrize('args, match', [
    (['--seed', str(2**70)], 'seed='), (['--seed', '2**70'], 'seed'), (['--n-per-class', '0'], 'n_per_class=0'),
    (['--n-per-class', '-2'], 'n_per_class=-2'), (['--epochs', '0'], 'epochs=0'), (['--epochs', '1.5'], 'epochs'),
    (['--size', '-3'], 'size=-3'), (['--bogus'], 'unrecognized'),
])
def test_cli_one_line_exit_2_before_any_work(no_training, capsys, args, match):
    assert main(['demo', *args, '--quiet']) == 2
    err = capsys.readouterr().err
    assert match in err and len(err.strip().splitlines()) == 1 and 'Traceback' not in err


def test_cli_out_is_an_existing_file(no_training, capsys, tmp_path):
    (tmp_path/'f').write_text('x')
    assert main(['demo', '--out', str(tmp_path/'f'), '--quiet']) == 2
    err = capsys.readouterr().err
    assert 'out=' in err and len(err.strip().splitlines()) == 1
    assert (tmp_path/'f').read_text() == 'x'
