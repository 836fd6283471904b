"""Attribution maps: Grad-CAM and CAM against captum, faithfulness for any map, the sanity checks of Adebayo et al.,
plot_top_losses with heat maps -- on real data with the embedded backbone, and the model left exactly as found."""
import numpy as np
import pytest
import timm
import torch
from torch import nn
from fastai.interpret import ClassificationInterpretation
from fastai.vision.all import Learner, CrossEntropyLossFlat

from fastai_cnntricks.core import CnnTricksError
from fastai_cnntricks.data import digits_dls
from fastai_cnntricks.transfer import timm_learner
from fastai_cnntricks.interpret import (grad_cam_maps, cam_maps, compare_attributions, attribution_sanity,
                                        rank_correlation, ssim, randomization_groups, edge_map)
from test_interpret import unsettle
from test_bad_input_interpret import full_state, assert_same_state

SIZE = 64


def plain_cnn():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=2),
                         nn.BatchNorm2d(8), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 10))


def timm_model(arch):
    return timm.create_model(arch, pretrained=False, num_classes=10).eval()


def settled(model):
    "An unsettled model (modes, flags, channels-last) that also holds grads, as mid-training."
    unsettle(model)
    for p in model.parameters(): p.grad = torch.randn_like(p)
    return model


# --- Grad-CAM and CAM against captum ------------------------------------------------------------------------

# The module whose output is the model's final feature map (what layer=None picks), and an inner stage.
CAPTUM_LAYERS = {'resnet10t': ('layer4', 'layer3'), 'efficientnet_lite0': ('bn2', 'blocks.4'),
                 'convnext_atto': ('norm_pre', 'stages.2'), 'plain': ('4', '2')}


@pytest.mark.parametrize('arch', list(CAPTUM_LAYERS))
@pytest.mark.parametrize('inner, mode', [(False, 'bilinear'), (True, 'nearest')])
def test_grad_cam_equals_captum(arch, inner, mode):
    from captum.attr import LayerGradCam, LayerAttribution
    torch.manual_seed(0)
    model = plain_cnn().eval() if arch == 'plain' else timm_model(arch)
    x, targets = torch.randn(3, 3, SIZE, SIZE), [1, 7, 3]
    name = CAPTUM_LAYERS[arch][inner]
    ours = grad_cam_maps(model, x, targets, layer=name if inner else None, interpolate=mode)
    ref = LayerGradCam(model, model.get_submodule(name)).attribute(x, target=targets, relu_attributions=True)
    ref = LayerAttribution.interpolate(ref, (SIZE, SIZE), interpolate_mode=mode)[:, 0]
    assert ref.abs().max() > 0
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


@pytest.mark.parametrize('arch', ['efficientnet_lite0', 'resnet10t', 'plain'])
def test_cam_is_grad_cam_without_relu_up_to_the_pooling_scale(arch):
    torch.manual_seed(0)
    model = plain_cnn().eval() if arch == 'plain' else timm_model(arch)
    x = torch.randn(2, 3, SIZE, SIZE)
    c = cam_maps(model, x, interpolate=None)
    g = grad_cam_maps(model, x, relu=False, interpolate=None)
    torch.testing.assert_close(c, g * c.shape[-1] * c.shape[-2], rtol=1e-4, atol=1e-5 * float(c.abs().max()))
    with torch.no_grad(): logits = model(x)
    # CAM's spatial mean plus the bias is the predicted class's logit (the defining property of a pooling head)
    bias = (model.get_classifier() if arch != 'plain' else model[-1]).bias[logits.argmax(1)]
    torch.testing.assert_close(c.mean((1, 2)) + bias, logits.max(1).values, rtol=1e-4, atol=1e-4)


def test_cam_refuses_other_heads_and_suggests_grad_cam():
    x = torch.randn(1, 3, SIZE, SIZE)
    with pytest.raises(CnnTricksError, match='grad_cam'): cam_maps(timm_model('convnext_atto'), x)  # norm after pool
    fastai_like = nn.Sequential(*plain_cnn()[:7], nn.BatchNorm1d(8), nn.Linear(8, 10)).eval()
    fastai_like[7].running_mean.fill_(0.5)
    with pytest.raises(CnnTricksError, match='pooling then one Linear'): cam_maps(fastai_like, x)


# --- the Learner methods: inputs, targets, errors, the model as found ------------------------------------------

@pytest.fixture(scope='module')
def small_dls(): return digits_dls(size=32, bs=16, n_per_class=2)


def test_learner_grad_cam_and_cam_inputs_targets_errors(small_dls):
    learn = Learner(small_dls, plain_cnn(), loss_func=CrossEntropyLossFlat())
    item = small_dls.valid_ds[0]
    maps, fig = learn.grad_cam(item, show=False)
    assert maps.shape == (1, 32, 32) and (maps >= 0).all() and fig.axes
    x = small_dls.valid.one_batch()[0][:4]
    per, _ = learn.grad_cam(x, target=[0, 1, 2, 3], show=False)
    for i in range(4): torch.testing.assert_close(per[i], grad_cam_maps(learn.model, x[i:i + 1], i)[0])
    c, _ = learn.cam(x, target=2, interpolate=None, show=False)
    assert c.shape == (4, 32, 32)  # the plain CNN keeps full resolution up to the pooling
    for bad, match in ((dict(target=-1), 'target'), (dict(target=[1, 2]), '2 class indices'), (dict(target=10), '0..9'),
                       (dict(interpolate='cubic'), 'interpolate'), (dict(layer='nope'), 'no layer named'),
                       (dict(alpha=2.), 'alpha'), (dict(relu=1), 'relu'), (dict(layer='6'), '4-D feature map')):
        with pytest.raises(CnnTricksError, match=match): learn.grad_cam(x, show=False, **bad)


def test_every_method_leaves_the_model_as_found_also_when_raising(small_dls):
    learn = timm_learner(small_dls, 'resnet10t', pretrained=False)
    interp = ClassificationInterpretation.from_learner(learn)  # fastai's get_preds leaves the model in eval mode
    settled(learn.model)
    before = full_state(learn.model)
    x = small_dls.valid.one_batch()[0][:2]
    learn.grad_cam(x, show=False); learn.cam(x, show=False)
    learn.faithfulness(x, 'gradcam', steps=4, show=False)
    attribution_sanity(learn, 'gradcam', x, data_randomization=True, show=False)
    interp.plot_top_losses(2, heatmap='gradcam', show=False)
    assert_same_state(before, full_state(learn.model))
    calls = []
    def boom(m, i, o):
        calls.append(1)
        raise RuntimeError('boom')
    h = learn.model.layer2.register_forward_hook(boom)
    before = full_state(learn.model)
    for call in (lambda: learn.grad_cam(x, show=False), lambda: learn.cam(x, show=False),
                 lambda: learn.grad_cam(x, layer='layer4', show=False)):
        with pytest.raises(RuntimeError, match='boom'): call()
    assert_same_state(before, full_state(learn.model))  # the test's own hook is still there, none of ours is
    h.remove()


# --- the measures of the sanity check against independent references ------------------------------------------

def test_rank_correlation_and_ssim_match_scipy():
    from scipy.stats import spearmanr
    from scipy.ndimage import gaussian_filter
    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 20, 20, generator=g).mul(5).round()  # many ties, as in ReLU'd maps
    b = (a + torch.rand(3, 20, 20, generator=g) * 3).round()
    ours = rank_correlation(a, b)
    for i in range(3): assert ours[i] == pytest.approx(spearmanr(a[i].flatten(), b[i].flatten())[0], abs=1e-9)
    assert rank_correlation(a, torch.zeros_like(a)).eq(0).all()  # a constant map ranks nothing
    x, y = a.double() / 5, b.double() / 8

    def ref_ssim(p, q):  # Wang et al. with scipy's Gaussian filter (11 taps at sigma 1.5), borders cropped
        f = lambda t: gaussian_filter(t, 1.5, truncate=3.5)[5:-5, 5:-5]
        mp, mq = f(p), f(q)
        vp, vq, c = f(p * p) - mp ** 2, f(q * q) - mq ** 2, f(p * q) - mp * mq
        return (((2 * mp * mq + 1e-4) * (2 * c + 9e-4)) / ((mp ** 2 + mq ** 2 + 1e-4) * (vp + vq + 9e-4))).mean()
    got = ssim(x, y)
    for i in range(3): assert float(got[i]) == pytest.approx(ref_ssim(x[i].numpy(), y[i].numpy()), abs=1e-9)
    assert torch.allclose(ssim(x, x), torch.ones(3, dtype=torch.float64))


def test_randomization_groups_go_from_the_top():
    names = [n for n, _ in randomization_groups(timm_model('resnet10t'))]
    assert names[0] == 'fc' and names[1] == 'layer4' and names[-1].startswith('conv1')
    assert [n for n, _ in randomization_groups(plain_cnn())] == ['7', '3', '2', '0']


# --- evidence on real data: the embedded backbone with a probe head on digits -----------------------------------

@pytest.fixture(scope='module')
def probed():
    dls = digits_dls(size=SIZE, bs=64, n_per_class=10)
    learn = timm_learner(dls, 'tf_efficientnet_lite0', pretrained='embedded')
    learn.probe_init_head()
    return learn, dls.valid.one_batch()[0][:32]


@pytest.fixture(scope='module')
def probed_128():
    "At 128 px the backbone's last feature map is 4 x 4 (at 64 px 2 x 2: Grad-CAM can only name a quadrant)."
    dls = digits_dls(size=128, bs=64, n_per_class=10)
    learn = timm_learner(dls, 'tf_efficientnet_lite0', pretrained='embedded')
    learn.probe_init_head()
    return learn, dls.valid.one_batch()[0][:32]


def test_grad_cam_deletes_and_inserts_better_than_a_random_map(probed_128):
    learn, x = probed_128
    table = compare_attributions(learn, x, methods=('gradcam', 'random', 'edges'))
    print(table.round(3).to_string())
    g = table.loc['gradcam']
    # paired over the same 32 images, in 16 px regions (the default: an eighth of the side)
    assert g.deletion_gain_vs_random > 2 * g.deletion_gain_se
    assert g.insertion_gain_vs_random > 2 * g.insertion_gain_se
    assert (table.images == 32).all() and (table.deletion_se > 0).all()
    assert table.loc['random', 'deletion_gain_vs_random'] == 0


def test_pixel_wise_deletion_favours_a_speckled_random_map(probed):
    "Why regions: removing single pixels in random order breaks the model sooner than removing any map's regions."
    learn, x = probed
    pixels = compare_attributions(learn, x, methods=('gradcam', 'random'), baseline='blur', steps=4, region=1)
    assert pixels.loc['gradcam', 'deletion_gain_vs_random'] < 0


def test_sanity_check_decorrelates_as_layers_are_randomized(probed):
    learn, x = probed
    table, fig = attribution_sanity(learn, 'gradcam', x[:16], data_randomization=True, show=False)
    print(table.round(3).to_string())
    cascade = table[table.layers > 0]
    assert cascade.randomized.iloc[0] == 'classifier' and len(cascade) == 9
    assert (cascade.rank_correlation < 0.5).all() and (cascade.ssim < 0.6).all()
    assert table.loc['labels shuffled (head refit)', 'rank_correlation'] < 0.5
    # a map that ignores the model (the edge detector) passes none of this: its maps never change
    edges, _ = attribution_sanity(learn, lambda model, xb, t: edge_map(xb), x[:4], show=False)
    assert (edges.rank_correlation > 0.999).all()
    assert len(fig.axes) == 11


def test_plot_top_losses_with_heatmaps_and_without(probed):
    learn, _ = probed
    interp = ClassificationInterpretation.from_learner(learn)
    fig = interp.plot_top_losses(3, heatmap='gradcam', show=False)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert len(texts) == 9 and texts[1].startswith('gradcam: ')
    losses, idx = interp.top_losses(3)
    assert texts[0].split(' / ')[1] == f'{float(losses[0]):.2f}'
    import matplotlib.pyplot as plt
    plt.close('all')
    assert interp.plot_top_losses(2) is None  # fastai's own plot, unchanged
    assert plt.gcf().axes[0].get_title().count('/') == 3
    with pytest.raises(CnnTricksError, match='heatmap'): interp.plot_top_losses(2, heatmap='lime')
