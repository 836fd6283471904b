"""Interpretation wing, bad and edge inputs: each gets a CnnTricksError naming the argument before any work is done
(or a TypeError for an unknown keyword), and the model is left exactly as found -- weights, grads and their memory
layout, train/eval modes, requires_grad flags, hooks. Half-precision and meta-device models, RGBA images."""
import copy
import math

import numpy as np
import pytest
import torch
from torch import nn
from fastai.vision.all import Learner, CrossEntropyLossFlat

from fastai_cnntricks.core import CnnTricksError
from fastai_cnntricks.data import digits_dls
from fastai_cnntricks.interpret import (occlusion_attribution, faithfulness_curves, render, objectives, image_param,
                                        kernel_effects, show_kernel_effects, RobustTransforms)

SIZE = 16
NAN, INF = float('nan'), float('inf')


def tiny_cnn():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 10))


def unsettle(model):
    """A state worth preserving: train mode with one module in eval, a frozen parameter, channels-last weights, and
    grads held in the standard layout (as mid-training, after a backward pass)."""
    model.train()
    model[0].eval()
    model.to(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(0)
    for p in model.parameters(): p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)  # contiguous grads
    model[3].weight.requires_grad_(False)
    return model


def full_state(model):
    "Everything an interpretation call promises to leave alone, as comparable values."
    def tensor(t): return None if t is None else (t.detach().clone(), t.stride(), t.dtype, t.device)
    return dict(params=[(n, tensor(p), p.requires_grad, tensor(p.grad), id(p.grad)) for n, p in model.named_parameters()],
                buffers=[(n, tensor(b)) for n, b in model.named_buffers()],
                modes=[m.training for m in model.modules()],
                hooks=[(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks)) for m in model.modules()])


def assert_same_state(before, after):
    for key in ('modes', 'hooks'): assert before[key] == after[key], key
    for (n, p0, f0, g0, gid0), (_, p1, f1, g1, gid1) in zip(before['params'], after['params']):
        assert f0 == f1 and gid0 == gid1, n
        for t0, t1 in ((p0, p1), (g0, g1)):
            assert (t0 is None) == (t1 is None), n
            if t0 is not None: assert torch.equal(t0[0], t1[0]) and t0[1:] == t1[1:], (n, t0[1], t1[1])
    for (n, b0), (_, b1) in zip(before['buffers'], after['buffers']):
        assert torch.equal(b0[0], b1[0]) and b0[1:] == b1[1:], n


@pytest.fixture(scope='module')
def dls(): return digits_dls(size=SIZE, bs=16, n_per_class=3)


@pytest.fixture(scope='module')
def learn(dls):
    torch.manual_seed(0)
    return Learner(dls, unsettle(tiny_cnn()), loss_func=CrossEntropyLossFlat())


IMG = lambda: torch.rand(3, SIZE, SIZE)
X = lambda: torch.rand(1, 3, SIZE, SIZE)
ITEM = lambda L: L.dls.valid_ds[0]

# (case id, call(learn) -> anything, the argument the message must name; TypeError where the name is a keyword)
CASES = [
    ('layer_names kind', lambda L: L.layer_names('convs'), 'kind'),
    ('layer_names kind int', lambda L: L.layer_names(3), 'kind'),
    ('layer_names size 0', lambda L: L.layer_names(size=0), 'size'),
    ('layer_names size -1', lambda L: L.layer_names(size=-1), 'size'),
    ('layer_names size inf', lambda L: L.layer_names(size=INF), 'size'),
    ('layer_names size True', lambda L: L.layer_names(size=True), 'size'),
    ('layer_names size 2.5', lambda L: L.layer_names(size=2.5), 'size'),
    ('layer_names size triple', lambda L: L.layer_names(size=(8, 8, 8)), 'size'),
    ('layer_names kwarg', lambda L: L.layer_names(sizes=8), TypeError),
    ('show_filters max_n 0', lambda L: L.show_filters(max_n=0, show=False), 'max_n'),
    ('show_filters max_n -1', lambda L: L.show_filters(max_n=-1, show=False), 'max_n'),
    ('show_filters max_n 2.5', lambda L: L.show_filters(max_n=2.5, show=False), 'max_n'),
    ('show_filters in_channel -1', lambda L: L.show_filters('3', in_channel=-1, show=False), 'in_channel'),
    ('show_filters in_channel 99', lambda L: L.show_filters('3', in_channel=99, show=False), 'in_channel'),
    ('show_filters ncols 0', lambda L: L.show_filters(ncols=0, show=False), 'ncols'),
    ('show_filters show str', lambda L: L.show_filters(show='yes'), 'show'),
    ('show_filters layer name', lambda L: L.show_filters('nope', show=False), 'layer'),
    ('show_filters not a conv', lambda L: L.show_filters('2', show=False), 'layer'),
    ('feature_maps img None', lambda L: L.show_feature_maps(None, '2', show=False), 'img'),
    ('feature_maps img dict', lambda L: L.show_feature_maps({'a': 1}, '2', show=False), 'img'),
    ('feature_maps img missing file', lambda L: L.show_feature_maps('missing.png', '2', show=False), 'img'),
    ('feature_maps img nan batch', lambda L: L.show_feature_maps(torch.full((1, 3, SIZE, SIZE), NAN), '2', show=False), 'img'),
    ('feature_maps img inf chw', lambda L: L.show_feature_maps(torch.full((3, SIZE, SIZE), INF), '2', show=False), 'img'),
    ('feature_maps img batch of 2', lambda L: L.show_feature_maps(torch.rand(2, 3, SIZE, SIZE), '2', show=False), 'img'),
    ('feature_maps img 5 channels', lambda L: L.show_feature_maps(torch.rand(1, 5, SIZE, SIZE), '2', show=False), 'img'),
    ('feature_maps img int batch', lambda L: L.show_feature_maps(torch.ones(1, 3, SIZE, SIZE, dtype=torch.long), '2', show=False), 'img'),
    ('feature_maps img 5-D', lambda L: L.show_feature_maps(torch.rand(1, 1, 3, SIZE, SIZE), '2', show=False), 'img'),
    ('feature_maps img empty batch', lambda L: L.show_feature_maps(torch.rand(0, 3, SIZE, SIZE), '2', show=False), 'img'),
    ('feature_maps img float > 1', lambda L: L.show_feature_maps(IMG() * 255, '2', show=False), 'img'),
    ('feature_maps img meta', lambda L: L.show_feature_maps(torch.empty(1, 3, SIZE, SIZE, device='meta'), '2', show=False), 'img'),
    ('feature_maps img bool array', lambda L: L.show_feature_maps(np.ones((SIZE, SIZE), bool), '2', show=False), 'img'),
    ('feature_maps img 2 channels', lambda L: L.show_feature_maps(np.zeros((SIZE, SIZE, 2), np.uint8), '2', show=False), 'img'),
    ('feature_maps max_n 0', lambda L: L.show_feature_maps(ITEM(L), '2', max_n=0, show=False), 'max_n'),
    ('feature_maps sort int', lambda L: L.show_feature_maps(ITEM(L), '2', sort=1, show=False), 'sort'),
    ('feature_maps layer int', lambda L: L.show_feature_maps(ITEM(L), 5, show=False), 'layer'),
    ('kernel_effects fn img None', lambda L: show_kernel_effects(None, show=False), 'img'),
    ('kernel_effects fn img nan', lambda L: show_kernel_effects(torch.full((3, 8, 8), NAN), show=False), 'img'),
    ('kernel_effects fn kernels empty', lambda L: show_kernel_effects(IMG(), kernels={}, show=False), 'kernels'),
    ('kernel_effects fn kernels 1x2', lambda L: show_kernel_effects(IMG(), kernels={'a': [[1, 2]]}, show=False), 'kernels'),
    ('kernel_effects fn kernels nan', lambda L: show_kernel_effects(IMG(), kernels={'a': [[NAN] * 3] * 3}, show=False), 'kernels'),
    ('kernel_effects fn show int', lambda L: show_kernel_effects(IMG(), show=0), 'show'),
    ('kernel_effects method img None', lambda L: L.show_kernel_effects(None, show=False), 'img'),
    ('kernel_effects method batch', lambda L: L.show_kernel_effects(torch.rand(2, 3, SIZE, SIZE), show=False), 'img'),
    ('kernel_effects method kernels', lambda L: L.show_kernel_effects(ITEM(L), kernels=[[1]], show=False), 'kernels'),
    ('kernel_effects array', lambda L: kernel_effects(np.ones((3, 8, 8))), 'img'),
    ('kernel_effects 2-D', lambda L: kernel_effects(torch.rand(8, 8)), 'img'),
    ('maximize_unit steps 2.5', lambda L: L.maximize_unit('0', 0, steps=2.5, show=False), 'steps'),
    ('maximize_unit steps 0', lambda L: L.maximize_unit('0', 0, steps=0, show=False), 'steps'),
    ('maximize_unit size 0', lambda L: L.maximize_unit('0', 0, size=0, show=False), 'size'),
    ('maximize_unit size inf', lambda L: L.maximize_unit('0', 0, size=INF, show=False), 'size'),
    ('maximize_unit size True', lambda L: L.maximize_unit('0', 0, size=True, show=False), 'size'),
    ('maximize_unit size 4', lambda L: L.maximize_unit('0', 0, size=4, show=False), 'size'),
    ('maximize_unit seed str', lambda L: L.maximize_unit('0', 0, seed='x', show=False), 'seed'),
    ('maximize_unit seed -1', lambda L: L.maximize_unit('0', 0, seed=-1, show=False), 'seed'),
    ('maximize_unit unit -1', lambda L: L.maximize_unit('0', -1, show=False), 'unit'),
    ('maximize_unit unit True', lambda L: L.maximize_unit('0', True, show=False), 'unit'),
    ('maximize_unit unit empty', lambda L: L.maximize_unit('0', [], show=False), 'unit'),
    ('maximize_unit unit 2.5', lambda L: L.maximize_unit('0', 2.5, show=False), 'unit'),
    ('maximize_unit unit beyond', lambda L: L.maximize_unit('0', 8, steps=1, size=SIZE, show=False), 'unit'),
    ('maximize_unit objective', lambda L: L.maximize_unit('0', 0, objective='x', show=False), 'objective'),
    ('maximize_unit lr 0', lambda L: L.maximize_unit('0', 0, lr=0, show=False), 'lr'),
    ('maximize_unit lr nan', lambda L: L.maximize_unit('0', 0, lr=NAN, show=False), 'lr'),
    ('maximize_unit diversity -1', lambda L: L.maximize_unit('0', 0, diversity=-1, show=False), 'diversity'),
    ('maximize_unit n_per_unit 0', lambda L: L.maximize_unit('0', 0, n_per_unit=0, show=False), 'n_per_unit'),
    ('maximize_unit param', lambda L: L.maximize_unit('0', 0, param='fourier', show=False), 'param'),
    ('maximize_unit decorrelate str', lambda L: L.maximize_unit('0', 0, decorrelate='yes', show=False), 'decorrelate'),
    ('maximize_unit transforms', lambda L: L.maximize_unit('0', 0, transforms='heavy', show=False), 'transforms'),
    ('maximize_unit progress None', lambda L: L.maximize_unit('0', 0, progress=None, show=False), 'progress'),
    ('maximize_unit layer', lambda L: L.maximize_unit('nope', 0, show=False), 'layer'),
    ('maximize_unit kwarg', lambda L: L.maximize_unit('0', 0, step=3, show=False), TypeError),
    ('top_activating k 0', lambda L: L.top_activating('2', 0, k=0, show=False), 'k'),
    ('top_activating dl list', lambda L: L.top_activating('2', 0, dl=[L.dls.valid.one_batch()], show=False), 'dl'),
    ('top_activating max_batches 0', lambda L: L.top_activating('2', 0, max_batches=0, show=False), 'max_batches'),
    ('top_activating unit beyond', lambda L: L.top_activating('2', 99, progress=False, show=False), 'unit'),
    ('top_activating synth array', lambda L: L.top_activating('2', 0, synth=np.ones((1, 3, 8, 8)), show=False), 'synth'),
    ('top_activating synth nan', lambda L: L.top_activating('2', 0, synth=torch.full((1, 3, 8, 8), NAN), show=False), 'synth'),
    ('occlusion batch_size 2.5', lambda L: L.occlusion_map(ITEM(L), batch_size=2.5, show=False), 'batch_size'),
    ('occlusion batch_size 0', lambda L: L.occlusion_map(ITEM(L), batch_size=0, show=False), 'batch_size'),
    ('occlusion window 0', lambda L: L.occlusion_map(ITEM(L), window=0, show=False), 'window'),
    ('occlusion window True', lambda L: L.occlusion_map(ITEM(L), window=True, show=False), 'window'),
    ('occlusion window too large', lambda L: L.occlusion_map(ITEM(L), window=64, show=False), 'window'),
    ('occlusion stride 0', lambda L: L.occlusion_map(ITEM(L), stride=0, show=False), 'stride'),
    ('occlusion stride > window', lambda L: L.occlusion_map(ITEM(L), window=4, stride=8, show=False), 'stride'),
    ('occlusion output', lambda L: L.occlusion_map(ITEM(L), output='probs', show=False), 'output'),
    ('occlusion target 10', lambda L: L.occlusion_map(ITEM(L), target=10, window=8, stride=8, progress=False, show=False), 'target'),
    ('occlusion target -1', lambda L: L.occlusion_map(ITEM(L), target=-1, show=False), 'target'),
    ('occlusion target 1.5', lambda L: L.occlusion_map(ITEM(L), target=1.5, show=False), 'target'),
    ('occlusion baseline str', lambda L: L.occlusion_map(ITEM(L), baseline='white', show=False), 'baseline'),
    ('occlusion baseline nan', lambda L: L.occlusion_map(ITEM(L), baseline=NAN, show=False), 'baseline'),
    ('occlusion baseline shape', lambda L: L.occlusion_map(ITEM(L), baseline=torch.zeros(2, 5, 5), show=False), 'baseline'),
    ('occlusion refine -0.1', lambda L: L.occlusion_map(ITEM(L), refine=-0.1, show=False), 'refine'),
    ('occlusion refine nan', lambda L: L.occlusion_map(ITEM(L), refine=NAN, show=False), 'refine'),
    ('occlusion img nan', lambda L: L.occlusion_map(torch.full((1, 3, SIZE, SIZE), NAN), show=False), 'img'),
    ('occlusion img batch', lambda L: L.occlusion_map(torch.rand(2, 3, SIZE, SIZE), show=False), 'img'),
    ('occlusion fold_bn str', lambda L: L.occlusion_map(ITEM(L), fold_bn='no', show=False), 'fold_bn'),
    ('occlusion kwarg', lambda L: L.occlusion_map(ITEM(L), windows=8, show=False), TypeError),
    ('occlusion_attribution model', lambda L: occlusion_attribution(L, X()), 'model'),
    ('occlusion_attribution x 3-D', lambda L: occlusion_attribution(L.model, IMG()), 'x'),
    ('occlusion_attribution x nan', lambda L: occlusion_attribution(L.model, X() * NAN), 'x'),
    ('occlusion_attribution x channels', lambda L: occlusion_attribution(L.model, torch.rand(1, 1, SIZE, SIZE)), 'x'),
    ('occlusion_attribution stats', lambda L: occlusion_attribution(L.model, X(), stats='imagenet'), 'stats'),
    ('occlusion_attribution stats 2 values', lambda L: occlusion_attribution(L.model, X(), stats=(torch.zeros(2), torch.ones(2))), 'stats'),
    ('faithfulness attr shape', lambda L: faithfulness_curves(L.model, X(), torch.rand(3, 3), 0, torch.zeros(1)), 'attr'),
    ('faithfulness steps 0', lambda L: faithfulness_curves(L.model, X(), torch.rand(SIZE, SIZE), 0, torch.zeros(1), steps=0), 'steps'),
    ('faithfulness region 0', lambda L: faithfulness_curves(L.model, X(), torch.rand(SIZE, SIZE), 0, torch.zeros(1), region=0), 'region'),
    ('faithfulness region -2', lambda L: faithfulness_curves(L.model, X(), torch.rand(SIZE, SIZE), 0, torch.zeros(1), region=-2), 'region'),
    ('faithfulness region 2.5', lambda L: faithfulness_curves(L.model, X(), torch.rand(SIZE, SIZE), 0, torch.zeros(1), region=2.5), 'region'),
    ('faithfulness region bool', lambda L: faithfulness_curves(L.model, X(), torch.rand(SIZE, SIZE), 0, torch.zeros(1), region=True), 'region'),
    ('faithfulness region nan', lambda L: faithfulness_curves(L.model, X(), torch.rand(SIZE, SIZE), 0, torch.zeros(1), region=NAN), 'region'),
    ('render n 0', lambda L: render(L.model, objectives.channel('0', 0), 0), 'n'),
    ('render objective str', lambda L: render(L.model, 'channel', 1), 'objective'),
    ('render seed 2.5', lambda L: render(L.model, objectives.channel('0', 0), 1, seed=2.5), 'seed'),
    ('image_param size 4', lambda L: image_param(1, 4), 'size'),
    ('RobustTransforms pad -1', lambda L: RobustTransforms(pad=-1), 'pad'),
    ('RobustTransforms scales 0', lambda L: RobustTransforms(scales=[0]), 'scales'),
    ('RobustTransforms jitter triple', lambda L: RobustTransforms(jitter=(1, 2, 3)), 'jitter'),
]


@pytest.mark.parametrize('call,arg', [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_refused_and_the_model_left_as_found(learn, call, arg):
    before = full_state(learn.model)
    if arg is TypeError:
        with pytest.raises(TypeError): call(learn)
    else:
        with pytest.raises(CnnTricksError) as e: call(learn)
        assert arg in str(e.value), str(e.value)
    assert_same_state(before, full_state(learn.model))


METHODS = {'layer_names': lambda L, x: L.layer_names('all'),
           'show_filters': lambda L, x: L.show_filters(show=False)[0],
           'show_feature_maps': lambda L, x: L.show_feature_maps(x, '2', show=False)[0],
           'maximize_unit': lambda L, x: L.maximize_unit('2', [0, 1], steps=2, size=SIZE, seed=0, progress=False,
                                                         show=False)[0],
           'top_activating': lambda L, x: L.top_activating('2', 1, k=3, max_batches=1, progress=False, show=False)[1],
           'occlusion_map': lambda L, x: L.occlusion_map(x, window=8, stride=4, faithfulness=True, progress=False,
                                                         show=False)[0]}


@pytest.mark.parametrize('method', list(METHODS))
def test_meta_device_model_gets_a_clear_error_before_any_work(dls, method):
    model = tiny_cnn().to('meta')
    learn = Learner(dls, model, loss_func=CrossEntropyLossFlat())
    with pytest.raises(CnnTricksError, match='meta device'): METHODS[method](learn, dls.valid_ds[0])


def test_meta_device_model_for_the_plain_functions():
    model = tiny_cnn().to('meta')
    for call in (lambda: occlusion_attribution(model, X()), lambda: render(model, objectives.channel('0', 0), 1)):
        with pytest.raises(CnnTricksError, match='meta device'): call()


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_precision_models_work_and_stay_as_found(dls, dtype):
    torch.manual_seed(0)
    ref = Learner(dls, tiny_cnn().eval(), loss_func=CrossEntropyLossFlat())
    low = Learner(dls, copy.deepcopy(ref.model).to(dtype), loss_func=CrossEntropyLossFlat())
    unsettle(low.model)
    before = full_state(low.model)
    item = dls.valid_ds[0]
    tol = dict(float16=0.02, bfloat16=0.1)[str(dtype).split('.')[-1]]
    for name, call in METHODS.items():
        got, want = call(low, item), call(ref, item)
        if name == 'layer_names': assert got == want
        elif name == 'maximize_unit': assert got.shape == want.shape and bool(torch.isfinite(got).all())
        else:
            got, want = got.float(), want.float()
            assert (got - want).abs().max() <= tol * want.abs().max() + 1e-3, name
    assert_same_state(before, full_state(low.model))
    assert all(p.dtype == dtype for p in low.model.parameters())


def test_grads_and_their_layout_are_restored(dls):
    "maximize_unit, render and the faithfulness curves run the model channels-last: the grads held keep their layout."
    learn = Learner(dls, tiny_cnn(), loss_func=CrossEntropyLossFlat())
    g = torch.Generator().manual_seed(0)
    for p in learn.model.parameters(): p.grad = torch.randn(p.shape, generator=g)
    before = full_state(learn.model)
    learn.maximize_unit('0', 0, steps=2, size=SIZE, progress=False, show=False)
    render(learn.model, objectives.channel('0', 0), 1, size=SIZE, steps=1, progress=False)  # the bare loop, too
    learn.occlusion_map(dls.valid_ds[0], window=8, stride=8, faithfulness=True, progress=False, show=False)
    assert_same_state(before, full_state(learn.model))
    assert learn.model[0].weight.grad.is_contiguous()


def test_rgba_images_lose_their_alpha_channel(learn):
    "An RGBA HWC array and a 4-channel CHW float tensor are read as RGBA and shown as their RGB part (documented)."
    rgb = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    rgba = np.concatenate([rgb, np.full((SIZE, SIZE, 1), 7, np.uint8)], -1)
    want, _ = learn.show_feature_maps(rgb, '2', show=False)
    for img in (rgba, torch.from_numpy(rgba).permute(2, 0, 1).float() / 255):
        got, _ = learn.show_feature_maps(img, '2', show=False)
        torch.testing.assert_close(got, want)
    assert not math.isnan(float(learn.occlusion_map(rgba, window=8, stride=8, progress=False, show=False)[0].sum()))


def test_a_learner_in_mixed_precision_gives_the_float32_results(dls):
    "fastai's `to_fp16` keeps float32 weights (autocast runs in a callback, not here): every method works as before."
    torch.manual_seed(0)
    ref = Learner(dls, tiny_cnn().eval(), loss_func=CrossEntropyLossFlat())
    mixed = Learner(dls, copy.deepcopy(ref.model), loss_func=CrossEntropyLossFlat()).to_fp16()
    item = dls.valid_ds[0]
    for name in ('layer_names', 'show_feature_maps', 'occlusion_map'):
        got, want = METHODS[name](mixed, item), METHODS[name](ref, item)
        assert got == want if name == 'layer_names' else torch.equal(got, want), name
