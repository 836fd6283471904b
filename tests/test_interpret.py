"Interpretation wing: results against independent references, and the model left exactly as found."
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from fastai.vision.all import Learner, CrossEntropyLossFlat

from fastai_cnntricks.core import CnnTricksError, model_snapshot
from fastai_cnntricks.data import digits_dls
from fastai_cnntricks.transfer import timm_learner
from fastai_cnntricks.interpret import (occlusion_attribution, kernel_effects, CLASSIC_KERNELS, RobustTransforms,
                                        objectives, OUTPUT, image_param, memory_format, drops_to_map)

channel, neuron, logit, diversity = objectives.channel, objectives.neuron, objectives.logit, objectives.diversity

SIZE = 32


@pytest.fixture(scope='module')
def dls(): return digits_dls(size=SIZE, bs=64)


def plain_cnn():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=2),
                         nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))


ARCHS = {'resnet10t': ('layer2', {}), 'efficientnet_lite0': ('blocks.2', {}), 'convnext_atto': ('stages.1', {}),
         'mobilenetv3_small_050': ('blocks.2', {}), 'vit_tiny_patch16_224': ('blocks.1', dict(img_size=SIZE, patch_size=8, depth=2))}


def make_learner(dls, arch):
    if arch == 'plain': return Learner(dls, plain_cnn(), loss_func=CrossEntropyLossFlat())
    return timm_learner(dls, arch, pretrained=False, model_kwargs=ARCHS[arch][1])


def state(model):
    return {k: (v.clone(), v.stride()) for k, v in model.state_dict().items()}


def assert_as_found(model, snap, st):
    assert model_snapshot(model) == snap
    now = model.state_dict()
    for k, (v, stride) in st.items():
        assert torch.equal(now[k], v) and now[k].stride() == stride, k


def unsettle(model):
    "A model state worth preserving: train mode with one module in eval, a frozen parameter, channels-last weights."
    model.train()
    next(m for m in model.modules() if isinstance(m, nn.Conv2d)).eval()
    next(model.parameters()).requires_grad_(False)
    model.to(memory_format=torch.channels_last)


# --- layers, filters, feature maps, kernels -------------------------------------------------------------------

def test_layer_names_shapes_and_errors(dls):
    learn = make_learner(dls, 'resnet10t')
    names = learn.layer_names('conv')
    assert names['conv1.0'] == (24, SIZE // 2, SIZE // 2) and names['layer4.0.conv2'][0] == 512
    assert all(isinstance(learn.model.get_submodule(n), nn.Conv2d) for n in names)
    assert learn.layer_names('linear') == {'fc': (10,)}
    with pytest.raises(CnnTricksError, match='layer4'): learn.show_feature_maps(dls.valid_ds[0], 'layer5', show=False)
    with pytest.raises(CnnTricksError, match="'conv', 'linear'"): learn.layer_names('convs')


def test_layer_names_norm_kind_is_the_norm_layers(dls):
    "timm's NormMlpClassifierHead has 'Norm' in its name but is a head; its LayerNorm2d is the norm layer."
    learn = make_learner(dls, 'convnext_atto')
    norms = learn.layer_names('norm')
    assert 'head.norm' in norms and 'head' not in norms and 'stem.1' in norms
    assert all('Norm' in type(learn.model.get_submodule(n)).__name__ for n in norms)


def test_show_filters_rgb_depthwise_grouped(dls):
    learn = make_learner(dls, 'plain')
    w = learn.model[0].weight.detach()
    tiles, fig = learn.show_filters(show=False)
    ref = (w - w.amin((1, 2, 3), keepdim=True)) / (w.amax((1, 2, 3), keepdim=True) - w.amin((1, 2, 3), keepdim=True))
    torch.testing.assert_close(tiles, ref)
    g, _ = learn.show_filters('2', show=False)  # grouped: 4 inputs per group, mean over them
    w2 = learn.model[2].weight.detach().mean(1)
    torch.testing.assert_close(g[3], (w2[3] - w2[3].min()) / (w2[3].max() - w2[3].min()))
    with pytest.raises(CnnTricksError, match='0..3'): learn.show_filters('2', in_channel=4, show=False)
    with pytest.raises(CnnTricksError, match='not a 2-D convolution'): learn.show_filters('7', show=False)
    eff = make_learner(dls, 'efficientnet_lite0')
    dw, _ = eff.show_filters('blocks.1.0.conv_dw', max_n=5, show=False)
    assert dw.shape == (5, 3, 3)


def test_feature_maps_match_a_plain_forward(dls):
    learn = make_learner(dls, 'plain')
    item = dls.valid_ds[3]
    maps, fig = learn.show_feature_maps(item, '1', show=False)
    x = learn.dls.test_dl([item[0]]).one_batch()[0]
    torch.testing.assert_close(maps, torch.relu(learn.model[0](x))[0].detach())
    vit = make_learner(dls, 'vit_tiny_patch16_224')
    vm, _ = vit.show_feature_maps(item, 'blocks.0', show=False)
    assert vm.shape == (192, SIZE // 8, SIZE // 8)  # tokens back on their 4x4 grid, class token dropped


def test_kernel_effects_against_manual_convolution():
    ramp = torch.linspace(0, 1, 16).expand(3, 16, 16).clone()  # brightness grows to the right
    out = kernel_effects(ramp)
    names = list(CLASSIC_KERNELS)
    torch.testing.assert_close(out[names.index('identity')], ramp[0])
    sx = out[names.index('vertical edges (Sobel x)')][1:-1, 1:-1]
    torch.testing.assert_close(sx, torch.full_like(sx, 8 / 15))  # (1+2+1) * 2 px * slope 1/15
    assert out[names.index('horizontal edges (Sobel y)')][1:-1, 1:-1].abs().max() < 1e-6
    with pytest.raises(CnnTricksError): kernel_effects(ramp, {'bad': [[1, 2]]})


# --- feature visualization ------------------------------------------------------------------------------------

def test_objectives_compose_and_diversity():
    acts = {'a': torch.arange(2 * 3 * 2 * 2.).reshape(2, 3, 2, 2), OUTPUT: torch.tensor([[1., 5.], [2., 7.]])}
    c = channel('a', [0, 2])(acts)
    torch.testing.assert_close(c, torch.stack([acts['a'][0, 0].mean(), acts['a'][1, 2].mean()]))
    torch.testing.assert_close(neuron('a', 1, x=1, y=0)(acts), acts['a'][:, 1, 0, 1])
    torch.testing.assert_close((2 * logit(1) - channel('a', 0))(acts), 2 * acts[OUTPUT][:, 1] - acts['a'][:, 0].mean((1, 2)))
    assert set((logit(1) + channel('a', 0)).layers) == {OUTPUT, 'a'}
    same = {'a': torch.ones(3, 4, 2, 2)}
    torch.testing.assert_close(diversity('a')(same), -torch.ones(3))  # identical Gram matrices: similarity 1


def test_parameterizations_and_transforms():
    g = torch.Generator().manual_seed(0)
    for param in ('fft', 'pixel'):
        params, img = image_param(2, 24, param, generator=g)
        x = img()
        assert x.shape == (2, 3, 24, 24) and 0 < x.min() and x.max() < 1
    # FFT: the image is the inverse real FFT of the 1/f-scaled spectrum (independent numpy reference)
    params, img = image_param(1, 16, 'fft', decorrelate=False, generator=g)
    spec = params[0].detach().numpy()
    f = np.sqrt(np.fft.fftfreq(16)[:, None] ** 2 + np.fft.rfftfreq(16)[None] ** 2)
    ref = np.fft.irfft2((spec[..., 0] + 1j * spec[..., 1]) / np.maximum(f, 1 / 16), s=(16, 16), norm='ortho') / 4
    torch.testing.assert_close(img(), torch.sigmoid(torch.from_numpy(ref).float()), atol=1e-6, rtol=1e-5)
    x = torch.rand(2, 3, 20, 20)
    ident = RobustTransforms(pad=0, jitter=0, scales=None, angles=None)
    torch.testing.assert_close(ident(x), x, atol=1e-5, rtol=1e-5)
    out = RobustTransforms()(x, generator=g)
    assert out.shape == x.shape


def test_maximize_unit_batches_units_and_excites_them(dls):
    torch.manual_seed(0)
    learn = make_learner(dls, 'plain')
    imgs, fig = learn.maximize_unit('0', [0, 5], steps=40, size=24, seed=0, lr=0.1, progress=False, show=False)
    assert imgs.shape == (2, 3, 24, 24) and imgs.min() >= 0 and imgs.max() <= 1
    with torch.no_grad():
        a = learn.model[0](imgs).mean((2, 3))  # (image, channel)
        gray = learn.model[0](torch.full((1, 3, 24, 24), 0.5))[0].mean((1, 2))  # where the optimization starts
    assert a[0, 0] > gray[0] and a[1, 5] > gray[5]
    assert a[0, 0] > a[1, 0] and a[1, 5] > a[0, 5]  # each image excites its own unit more than the other's
    with pytest.raises(CnnTricksError, match='8 channels'): learn.maximize_unit('1', 8, steps=1, show=False)
    with pytest.raises(CnnTricksError, match='10 outputs'):
        learn.maximize_unit(None, 10, objective='logit', steps=1, show=False)
    with pytest.raises(CnnTricksError, match='objective'): learn.maximize_unit('1', 0, objective='x', show=False)


def test_top_activating_matches_full_scan(dls):
    learn = make_learner(dls, 'plain')
    idxs, top, imgs, fig = learn.top_activating('1', [2, 6], k=5, progress=False, show=False)
    with torch.no_grad():
        xs = torch.cat([b[0] for b in dls.valid])
        a = torch.relu(learn.model[0](xs)).mean((2, 3))[:, [2, 6]].T
    ref_top, ref_idx = a.topk(5, dim=1)
    torch.testing.assert_close(top, ref_top)
    assert torch.equal(idxs, ref_idx)
    torch.testing.assert_close(imgs[0, 0], xs[ref_idx[0, 0]].as_subclass(torch.Tensor))


def random_bn_stats(model):
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * .2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + .5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + .5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * .1)


class TwoUses(nn.Module):
    "A conv whose output feeds a BatchNorm and a skip connection: folding would change the skip, so it must not."
    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3), nn.Linear(3, 4)
    def forward(self, x):
        y = self.conv(x)
        return self.fc((self.bn(y) + y).mean((2, 3)))


@pytest.mark.parametrize('arch', ['resnet10t', 'tf_efficientnet_lite0', 'mobilenetv3_small_050', 'plain', 'two_uses'])
def test_inference_copy_folds_batchnorms_and_leaves_the_model(arch):
    import timm
    from fastai_cnntricks.interpret._occlusion.inference_copy import inference_copy, fold_batchnorms
    torch.manual_seed(0)
    model = {'plain': plain_cnn, 'two_uses': TwoUses}.get(arch, lambda: timm.create_model(arch, num_classes=5))()
    random_bn_stats(model)
    unsettle(model)
    snap, st = model_snapshot(model), state(model)
    x = torch.randn(2, 3, 48, 48)
    fast = inference_copy(model, x)
    n_bn = lambda m: sum(isinstance(o, nn.modules.batchnorm._BatchNorm) for o in m.modules())
    if arch == 'two_uses':
        assert n_bn(fast) == 1  # the fold changed the output, so the unfolded copy came back
        import copy
        assert fold_batchnorms(copy.deepcopy(model).eval(), x) == 1
    else:
        assert n_bn(model) > 0 and n_bn(fast) == 0 and not fast.training  # every BatchNorm here follows a conv
    model.eval()
    with torch.no_grad(): ref, out = model(x), fast(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
    model.train()
    unsettle(model)
    assert_as_found(model, snap, st)


# --- occlusion --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('window,stride,output,channels_last,batch_size', [
    (8, 4, 'prob', True, 16), (8, 5, 'logit', False, 16), (12, 6, 'prob', False, 16),
    (8, 4, 'logit', True, None)])  # None: 49 windows, one pass with the image
def test_occlusion_equals_captum(window, stride, output, channels_last, batch_size):
    from captum.attr import Occlusion
    import timm
    torch.manual_seed(0)
    model = timm.create_model('resnet10t', num_classes=10).eval()
    random_bn_stats(model)  # so that folding them into the convolutions is really exercised
    x = torch.randn(1, 3, 32, 32)
    attr, target, _ = occlusion_attribution(model, x, window=window, stride=stride, baseline=-0.5, output=output,
                                            batch_size=batch_size, channels_last=channels_last, progress=False)
    fwd = (lambda z: model(z).softmax(1)) if output == 'prob' else model
    ref = Occlusion(fwd).attribute(x, sliding_window_shapes=(3, window, window), strides=(3, stride, stride),
                                   baselines=-0.5, target=target, perturbations_per_eval=16)
    assert torch.equal(ref[0, 0], ref[0, 2])  # a window spanning all channels: every channel carries the same value
    torch.testing.assert_close(attr, ref[0, 0], rtol=1e-4, atol=1e-4 * ref.abs().max().item())


class ReadsInputTwice(nn.Module):
    "The first convolution sees the input, and so does the head: reusing the convolution alone would be wrong."
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 8, 5, stride=3, padding=2, dilation=2), nn.Linear(8, 4)
    def forward(self, x): return self.fc(self.conv(x).mean((2, 3))) + x[..., :8, :8].mean((1, 2, 3))[:, None]


class SkipToHead(nn.Module):
    "A chain a -> b, but the head reads a's output too: only `a` may be computed incrementally."
    def __init__(self):
        super().__init__()
        self.a, self.b, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.Linear(16, 4)
    def forward(self, x):
        a = self.a(x)
        return self.fc(torch.cat([self.b(a).mean((2, 3)), a.amax((2, 3))], 1))


@pytest.mark.parametrize('arch,window,stride,units', [
    ('resnet10t', (8, 8), (4, 4), ['conv1.0', 'layer1.0']), ('dilated', (7, 10), (5, 3), ['0', '1']),
    ('reads_twice', (8, 8), (4, 4), []), ('skip_to_head', (8, 8), (4, 4), ['a'])])
def test_window_forward_computes_the_opening_layers_exactly(arch, window, stride, units):
    import timm
    from fastai_cnntricks.interpret._occlusion.window_forward import window_forward
    from fastai_cnntricks.interpret._occlusion.inference_copy import inference_copy
    from fastai_cnntricks.interpret.occlusion import window_starts
    torch.manual_seed(0)
    model = {'resnet10t': lambda: timm.create_model('resnet10t', num_classes=4, zero_init_last=False),
             'dilated': lambda: nn.Sequential(nn.Conv2d(3, 8, 5, stride=3, padding=2, dilation=2), nn.ReLU(),
                                              nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)),
             'reads_twice': ReadsInputTwice, 'skip_to_head': SkipToHead}[arch]().eval()
    random_bn_stats(model)
    h, w = 96, 93  # odd: crops must keep the stride phase and the padding of the full map
    x, base = torch.randn(1, 3, h, w), torch.randn(1, 3, h, w)
    ys, xs = window_starts(h, window[0], stride[0]), window_starts(w, window[1], stride[1])
    iy, ix = torch.arange(len(ys)).repeat_interleave(len(xs)), torch.arange(len(xs)).repeat(len(ys))
    copy = inference_copy(model, x)
    with window_forward(copy, x, base, window, ys, xs, incremental=False) as full: ref = full(iy, ix)
    with window_forward(copy, x, base, window, ys, xs) as fast:
        assert all(u in fast.units for u in units) and (units or not fast.units)  # nothing, where it would be wrong
        out = fast(iy, ix)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
    with torch.no_grad(): torch.testing.assert_close(copy(x), model(x))  # the modules are back after the context
    masked = x.clone()  # and the first window's logits are those of the occluded image itself
    masked[..., :window[0], :window[1]] = base[..., :window[0], :window[1]]
    with torch.no_grad(): torch.testing.assert_close(out[0], model(masked)[0], rtol=1e-4, atol=1e-5)


def test_window_forward_keeps_the_longest_exact_prefix():
    "A random-init ConvNeXt: its blocks' layer scale (1e-6) hides their reach, so the full plan is not exact; the"
    "prefix before them still runs on crops, exactly."
    import timm
    from fastai_cnntricks.interpret._occlusion.window_forward import window_forward
    from fastai_cnntricks.interpret._occlusion.inference_copy import inference_copy
    from fastai_cnntricks.interpret.occlusion import window_starts
    torch.manual_seed(0)
    model = timm.create_model('convnext_atto', num_classes=4).eval()
    x, base = torch.randn(1, 3, 128, 128), torch.zeros(1, 3, 128, 128)
    ys = window_starts(128, 16, 16)
    iy, ix = torch.arange(len(ys)).repeat_interleave(len(ys)), torch.arange(len(ys)).repeat(len(ys))
    copy = inference_copy(model, x)
    with window_forward(copy, x, base, (16, 16), ys, ys, incremental=False) as full: ref = full(iy, ix)
    with window_forward(copy, x, base, (16, 16), ys, ys) as fast:
        assert fast.units[:2] == ['stem.0', 'stem.1'], fast.units
        out = fast(iy, ix)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


@pytest.mark.parametrize('module,geometry', [
    (nn.Conv2d(3, 4, 7, 2, 3), ((2, 3, 3), (2, 3, 3))), (nn.MaxPool2d(3, 2, 1), ((2, 1, 1), (2, 1, 1))),
    (nn.Conv2d(3, 4, (3, 5), 1, (0, 4), dilation=(1, 2)), ((1, 0, 2), (1, 4, 4))), (nn.ReLU(), ((1, 0, 0), (1, 0, 0))),
    (nn.AdaptiveAvgPool2d(1), None), (nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1), nn.Conv2d(4, 4, 3, 1, 1)), ((2, 3, 3),) * 2)])
def test_local_geometry_measures_receptive_fields(module, geometry):
    from fastai_cnntricks.interpret._occlusion.receptive_field import local_geometry
    assert local_geometry(module, torch.randn(1, 3, 64, 61)) == geometry


@pytest.mark.parametrize('arch', ['resnet18', 'tf_efficientnet_lite0', 'convnext_atto'])
def test_known_geometry_is_what_measuring_finds(monkeypatch, arch):
    "Plain convolutions and elementwise modules get their geometry from their settings: the same as measured."
    import timm
    import fastai_cnntricks.interpret._occlusion.receptive_field as rf
    from fastai_cnntricks.interpret._occlusion.call_chain import forward_chain
    model = timm.create_model(arch, num_classes=4).eval()
    extra = [nn.Conv2d(4, 4, 3, padding='same', dilation=2), nn.Conv2d(4, 4, 5, 2, padding='valid'),
             nn.Conv2d(4, 4, (1, 3), 1, (0, 1)), nn.BatchNorm2d(4).eval(), nn.SiLU()]
    x, pairs = torch.randn(1, 3, 128, 128), []  # maps of at least 12 px, where measuring can tell
    with torch.no_grad():
        for name, m in forward_chain(model, x):
            if rf.known_geometry(m) is not None and min(x.shape[2:]) >= 12: pairs.append((name, m, x.clone()))
            x = m(x)
            if not (isinstance(x, torch.Tensor) and x.dim() == 4): break
    pairs += [(repr(m), m, torch.randn(1, 4, 40, 40)) for m in extra]
    assert len(pairs) >= 6, [n for n, _, _ in pairs]
    known = {n: rf.known_geometry(m) for n, m, _ in pairs}
    monkeypatch.setattr(rf, 'known_geometry', lambda m: None)
    for name, m, a in pairs: assert rf.local_geometry(m, a) == known[name], name
    bn_train = nn.BatchNorm2d(4).train()
    assert rf._pointwise(bn_train) is False  # a training-mode norm mixes the batch: not elementwise


def test_forward_chain_splits_sequences_and_keeps_blocks_whole():
    import timm
    from fastai_cnntricks.interpret._occlusion.call_chain import forward_chain
    model = timm.create_model('resnet10t', num_classes=4).eval()
    names = [n for n, _ in forward_chain(model, torch.randn(1, 3, 32, 32))]
    assert names[:9] == [f'conv1.{i}' for i in range(7)] + ['bn1', 'act1'] and 'layer1.0' in names
    assert names[-1] == 'fc' and not any(n.startswith('layer1.0.') for n in names)  # a residual block stays whole
    assert [n for n, _ in forward_chain(SkipToHead(), torch.randn(1, 3, 16, 16))] == ['a', 'b']


def test_occlusion_map_baselines_faithfulness_refine(dls):
    learn = make_learner(dls, 'plain')
    item = dls.valid_ds[0]
    x = learn.dls.test_dl([item[0]]).one_batch()[0]
    blur, _, _ = learn.occlusion_map(item, window=8, stride=4, baseline='blur', progress=False, show=False)
    from torchvision.transforms.functional import gaussian_blur
    ref, _, _ = learn.occlusion_map(x, window=8, stride=4, baseline=gaussian_blur(x, [9, 9], [8 / 3] * 2),
                                    progress=False, show=False)
    torch.testing.assert_close(blur, ref)
    attr, curves, _ = learn.occlusion_map(item, window=8, stride=4, faithfulness=True, progress=False, show=False)
    with torch.no_grad(): p = learn.model.eval()(x).softmax(1)[0]
    t = int(p.argmax())
    assert curves['deletion'][0] == pytest.approx(float(p[t]), rel=1e-4)
    assert curves['insertion'][-1] == pytest.approx(float(p[t]), rel=1e-4)
    fine, _, _ = learn.occlusion_map(item, window=8, stride=4, refine=0., progress=False, show=False)
    torch.testing.assert_close(fine, attr, rtol=1e-4, atol=1e-6)  # refine=0 evaluates every window that differs
    coarse, _, _ = learn.occlusion_map(item, window=8, stride=4, refine=0.3, progress=False, show=False)
    rank = lambda a: a.flatten().argsort().argsort().float()
    assert torch.corrcoef(torch.stack([rank(coarse), rank(attr)]))[0, 1] > 0.8


def test_drops_to_map_is_mean_over_covering_windows():
    drops = torch.tensor([[1., 2.], [3., 4.]])
    m = drops_to_map(drops, (6, 6), (4, 4), (2, 2))
    assert m[0, 0] == 1 and m[2, 2] == 2.5 and m[5, 5] == 4 and m[2, 0] == 2


def test_bad_inputs(dls):
    learn = make_learner(dls, 'plain')
    item = dls.valid_ds[0]
    with pytest.raises(CnnTricksError, match='larger than the image'): learn.occlusion_map(item, window=64, show=False)
    with pytest.raises(CnnTricksError, match='stride'): learn.occlusion_map(item, stride=0, show=False)
    with pytest.raises(CnnTricksError, match='not an image'): learn.occlusion_map({'a': 1}, show=False)
    with pytest.raises(CnnTricksError, match='not an image file'): learn.show_feature_maps('missing.png', '1', show=False)
    with pytest.raises(CnnTricksError, match='0..9'): learn.occlusion_map(item, target=10, show=False)
    gray = torch.rand(1, 1, SIZE, SIZE)
    with pytest.warns(UserWarning, match='3 channels'):
        a, _, _ = learn.occlusion_map(gray, window=8, stride=8, progress=False, show=False)
    assert a.shape == (SIZE, SIZE)
    img = torch.rand(3, SIZE, SIZE); before = img.clone()
    learn.occlusion_map(img, window=8, stride=8, progress=False, show=False)
    assert torch.equal(img, before)  # the input image is not modified


# --- the model is left exactly as found ----------------------------------------------------------------------

@pytest.mark.parametrize('arch', list(ARCHS) + ['plain'])
def test_model_left_as_found(dls, arch):
    learn = make_learner(dls, arch)
    unsettle(learn.model)
    layer = ARCHS[arch][0] if arch in ARCHS else '1'
    snap, st = model_snapshot(learn.model), state(learn.model)
    item = dls.valid_ds[1]
    learn.layer_names('all')
    learn.show_filters(show=False)
    learn.show_feature_maps(item, layer, show=False)
    learn.maximize_unit(layer, [0, 1], steps=1, size=SIZE, progress=False, show=False)
    learn.occlusion_map(item, window=16, stride=16, faithfulness=True, progress=False, show=False)
    assert_as_found(learn.model, snap, st)


@pytest.mark.parametrize('method', ['maximize_unit', 'occlusion_map', 'top_activating', 'show_feature_maps'])
def test_model_left_as_found_when_a_call_raises_midway(dls, method):
    learn = make_learner(dls, 'resnet10t')
    unsettle(learn.model)
    calls = []
    def boom(m, i, o):
        calls.append(1)
        if len(calls) >= 3 or method == 'show_feature_maps': raise RuntimeError('boom')
    h = learn.model.layer1.register_forward_hook(boom)
    snap, st = model_snapshot(learn.model), state(learn.model)
    item = dls.valid_ds[1]
    with pytest.raises(RuntimeError, match='boom'):
        if method == 'maximize_unit': learn.maximize_unit('layer3', 1, steps=5, size=SIZE, progress=False, show=False)
        elif method == 'occlusion_map': learn.occlusion_map(item, window=8, stride=4, batch_size=4, progress=False, show=False)
        elif method == 'top_activating': learn.top_activating('layer3', 1, progress=False, show=False)
        else: learn.show_feature_maps(item, 'layer3', show=False)
    assert_as_found(learn.model, snap, st)  # the test's own hook is still there, none of ours is
    h.remove()


def test_memory_format_restores_the_very_tensors():
    m = plain_cnn()
    ptrs = [(p.data_ptr(), p.stride()) for p in m.parameters()]
    with pytest.raises(RuntimeError):
        with memory_format(m):
            assert m[0].weight.is_contiguous(memory_format=torch.channels_last)
            raise RuntimeError
    assert [(p.data_ptr(), p.stride()) for p in m.parameters()] == ptrs


@pytest.mark.gpu
def test_runs_on_cuda(dls):
    learn = make_learner(dls, 'resnet10t')
    learn.model.cuda()
    snap, st = model_snapshot(learn.model), state(learn.model)
    a, _, _ = learn.occlusion_map(dls.valid_ds[0], window=8, stride=4, progress=False, show=False)
    imgs, _ = learn.maximize_unit('layer2', [0, 1], steps=3, size=SIZE, progress=False, show=False)
    assert a.shape == (SIZE, SIZE) and imgs.shape == (2, 3, SIZE, SIZE)
    assert_as_found(learn.model, snap, st)


# --- feature visualization from a real image, any channel count; measured occlusion batches ------------------------

def tiny_cnn(channels):
    return nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 10))


@pytest.mark.parametrize('param', ['fft', 'pixel'])
def test_maximize_unit_starts_from_a_real_image(dls, param):
    from fastai_cnntricks.interpret import INIT_EPS
    from fastai_cnntricks.interpret.inputs import image_batch, to_display
    x = torch.rand(2, 3, 20, 24) * 0.9 + 0.05
    for decorrelate in (True, False):  # step 0 renders the image: the parameterization inverted
        _, img = image_param(2, (20, 24), param, decorrelate=decorrelate, init=x)
        torch.testing.assert_close(img(), x, atol=1e-5, rtol=0)
    learn = Learner(dls, tiny_cnn(3), loss_func=CrossEntropyLossFlat())
    want = to_display(learn, image_batch(learn, dls.valid_ds[3])).clamp(INIT_EPS, 1 - INIT_EPS)
    snap, st = model_snapshot(learn.model), state(learn.model)
    for init in (3, dls.valid_ds[3]):  # an index into the validation set, a dataset item
        imgs, _ = learn.maximize_unit('0', [0, 1], steps=1, lr=1e-6, param=param, transforms='none', init=init,
                                      progress=False, show=False)
        assert imgs.shape == (2, 3, SIZE, SIZE)
        torch.testing.assert_close(imgs, want.expand(2, -1, -1, -1), atol=1e-4, rtol=0)
    moved, _ = learn.maximize_unit('0', 0, steps=20, lr=0.1, param=param, init=3, seed=0, progress=False, show=False)
    with torch.no_grad(): a, b = (learn.model[0](z)[:, 0].mean() for z in (moved, want))
    assert a > b  # optimized from the image, the unit is excited more
    assert_as_found(learn.model, snap, st)
    bad = {'index': len(dls.valid_ds), 'nan': torch.full((1, 3, SIZE, SIZE), float('nan')),
           'channels': torch.zeros(1, 2, SIZE, SIZE), 'batch': torch.zeros(3, 3, SIZE, SIZE), 'type': {'a': 1}}
    for what, init in bad.items():
        with pytest.raises(CnnTricksError, match='init'):
            learn.maximize_unit('0', [0, 1], steps=1, init=init, progress=False, show=False)
    assert_as_found(learn.model, snap, st)


@pytest.mark.parametrize('model,note', [(lambda: tiny_cnn(1), 'grey'), (lambda: tiny_cnn(4), 'first 3 channels'),
                                        (lambda: __import__('timm').create_model('resnet10t', in_chans=1,
                                                                                 num_classes=10), 'grey')])
def test_maximize_unit_on_any_channel_count(dls, model, note):
    torch.manual_seed(0)
    learn = Learner(dls, model(), loss_func=CrossEntropyLossFlat())
    c = learn.model.conv1[0].in_channels if hasattr(learn.model, 'conv1') else learn.model[0].in_channels
    layer = 'layer1' if c == 1 and hasattr(learn.model, 'layer1') else '0'
    imgs, fig = learn.maximize_unit(layer, [0, 1], steps=25, size=24, lr=0.1, seed=0, progress=False, show=False)
    assert imgs.shape == (2, c, 24, 24) and 0 <= imgs.min() and imgs.max() <= 1
    title = fig.axes[0].get_title()
    assert 'colour decorrelation off' in title and note in title and f'{c}-channel' in title
    from fastai_cnntricks.interpret.featvis import run_objective, stats_for_channels
    from fastai_cnntricks.interpret.featvis_objectives import Objective
    from fastai_cnntricks.interpret.inputs import input_stats
    mean, std = stats_for_channels(input_stats(learn, 'cpu'), c) or (0., 1.)
    with torch.no_grad():
        maps = lambda z: run_objective(learn.model.eval(), Objective(None, [layer]), (z - mean) / std)[layer]
        got, grey = maps(imgs).mean((2, 3)), maps(torch.full((1, c, 24, 24), 0.5)).mean((2, 3))[0]
    assert got[0, 0] > grey[0] and got[1, 1] > grey[1]  # each unit excited beyond the grey start


def test_tuned_batches_cover_every_window_once_and_keep_the_fastest():
    import time
    from fastai_cnntricks.interpret._occlusion import tuned_batches
    pos = torch.cartesian_prod(torch.arange(15), torch.arange(15))
    def slow_small(iy, ix): time.sleep(0.02)  # a fixed cost per batch: large batches are faster per window
    def slow_each(iy, ix): time.sleep(0.004 * len(iy))  # per window: no faster in any batch size
    paths = dict(incremental=slow_each, full=slow_small)
    got = [(p, f) for p, f in tuned_batches(pos, paths, cap=64) if f(p[:, 0], p[:, 1]) is None]  # run as timed
    seen = torch.cat([p for p, _ in got])
    assert torch.equal(seen, pos)  # every window once, in order
    assert got[-1][1] is slow_small and len(got[-1][0]) > 16  # the rest runs full, in large batches
    assert len({len(p) for p, _ in got[3:]}) <= 2  # equal batches, no small last one
    fixed = list(tuned_batches(pos, paths, batch_size=7))
    assert [len(p) for p, _ in fixed] == [7] * 32 + [1] and all(f is slow_each for _, f in fixed)


def test_occlusion_takes_stats_of_one_value_or_one_per_channel_for_any_channel_count():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 3)).eval()
    x = torch.rand(1, 1, 24, 24)
    for stats in [(torch.tensor([0.5]), torch.tensor([0.25])), (torch.zeros(1, 1, 1, 1), torch.ones(1, 1, 1, 1))]:
        attr, _, _ = occlusion_attribution(model, x, window=8, stride=8, baseline='black', stats=stats, progress=False)
        assert attr.shape == (24, 24) and torch.isfinite(attr).all()
    with pytest.raises(CnnTricksError, match='1-channel'):
        occlusion_attribution(model, x, stats=(torch.zeros(3), torch.ones(3)), progress=False)


def test_light_copy_shares_storage_but_changes_to_the_copy_leave_the_model_as_found():
    import timm
    from fastai_cnntricks.interpret._occlusion.inference_copy import light_copy, set_module
    from test_bad_input_interpret import full_state, assert_same_state
    model = timm.create_model('resnet10t', pretrained=False, num_classes=3).eval()
    model.fc = nn.Linear(256, 3)  # ... which this head takes (the check is what happens to `model`, not the copy's output)
    model.fc.weight = model.fc.weight  # a parameter reached twice stays one parameter in the copy
    seen = []
    model.layer1.register_forward_hook(lambda *a: seen.append('user'))
    before = full_state(model)
    c = light_copy(model)
    assert c.conv1[0].weight.data_ptr() == model.conv1[0].weight.data_ptr()  # nothing was copied
    c.layer2.register_forward_hook(lambda *a: seen.append('copy'))
    set_module(c, 'layer4', nn.Identity())  # the head's pooling then sees layer3's 256 channels...
    c.bn1.running_mean = torch.zeros_like(c.bn1.running_mean)
    c.to(memory_format=torch.channels_last).train()
    for p in c.parameters(): p.requires_grad_(False)
    with torch.no_grad(): c(torch.rand(1, 3, 32, 32).contiguous(memory_format=torch.channels_last))
    assert seen == ['user', 'copy']  # the user's hooks run in the copy too, as in a deep copy
    assert_same_state(before, full_state(model))
    assert isinstance(model.layer4, nn.Sequential) and not model.layer2._forward_hooks


@pytest.mark.parametrize('size,folded', [(64, False), (96, False), (128, True)])
def test_occlusion_folds_batchnorms_only_where_it_can_pay(monkeypatch, size, folded):
    "49 or 121 windows run as one or two whole-image batches, which never pay back folding's extra passes; 225 do."
    import timm
    import fastai_cnntricks.interpret.occlusion as occ
    seen, real = [], occ.inference_copy
    monkeypatch.setattr(occ, 'inference_copy', lambda *a, **kw: seen.append(kw['fold_bn']) or real(*a, **kw))
    model = timm.create_model('resnet10t', num_classes=4).eval()
    occ.occlusion_attribution(model, torch.randn(1, 3, size, size), window=16, stride=8, progress=False)
    assert seen == [folded]


def test_tuned_batches_time_whole_images_in_cache_sized_batches_too():
    "A whole-image path that slows per window as batches grow (a depthwise-heavy net out of cache) runs in small ones."
    import time
    from fastai_cnntricks.interpret._occlusion import tuned_batches
    pos = torch.cartesian_prod(torch.arange(15), torch.arange(15))
    def out_of_cache(iy, ix): time.sleep(0.0002 * len(iy) ** 2)  # per window: 3 ms at 16, 13 ms at 64
    def slow_each(iy, ix): time.sleep(0.02 * len(iy))
    got = [(p, f) for p, f in tuned_batches(pos, dict(incremental=slow_each, full=out_of_cache), cap=64)
           if f(p[:, 0], p[:, 1]) is None]
    assert got[-1][1] is out_of_cache and len(got[-1][0]) <= 16


def test_tuned_batches_try_the_largest_batch_only_where_it_can_pay():
    "121 windows: after the middle-size trials too few are left for a batch of 64 to pay back a losing trial."
    from fastai_cnntricks.interpret._occlusion import tuned_batches
    def fast(iy, ix): return None
    for n, tried in ((11, False), (15, True)):
        pos = torch.cartesian_prod(torch.arange(n), torch.arange(n))
        got = [(p, f) for p, f in tuned_batches(pos, dict(incremental=fast, full=fast), cap=64)]
        assert torch.equal(torch.cat([p for p, _ in got]), pos)
        assert [len(p) for p, _ in got[:2]] == [16, 16]  # the cropped path first, then whole images
        assert (len(got[2][0]) == 64) is tried, [len(p) for p, _ in got]


def test_few_windows_run_in_one_pass_with_the_image():
    "Up to 128 windows on a CPU: the image and its occluded copies as whole images, the same map as captum's way."
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 3)).eval()
    calls = []
    model.register_forward_pre_hook(lambda m, i: calls.append(len(i[0])))
    x = torch.rand(1, 3, 32, 32)
    attr, target, score = occlusion_attribution(model, x, window=8, stride=4, baseline=0., progress=False)
    assert calls == [1 + 49]  # the user's hooks run in the copy too (as in a deep copy); one pass
    calls.clear()
    wide = torch.rand(1, 3, 48, 48)  # 121 windows: two equal batches, the image in the first
    attr2, _, _ = occlusion_attribution(model, wide, window=8, stride=4, baseline=0., progress=False)
    assert calls == [61, 61]
    calls.clear()
    slow2, _, _ = occlusion_attribution(model, wide, window=8, stride=4, baseline=0., batch_size=7, progress=False)
    assert torch.allclose(attr2, slow2, atol=1e-6)
    with torch.no_grad(): ref = model(x).softmax(1)[0]
    assert target == int(ref.argmax()) and score == pytest.approx(float(ref.max()), rel=1e-5)
    slow, _, _ = occlusion_attribution(model, x, window=8, stride=4, baseline=0., batch_size=5, progress=False)
    assert torch.allclose(attr, slow, atol=1e-6)  # the tuned path, 10 batches, agrees
    with pytest.raises(CnnTricksError, match='target'):
        occlusion_attribution(model, x, window=8, stride=4, target=3, progress=False)
