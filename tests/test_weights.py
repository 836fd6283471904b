"The embedded ImageNet weights are real, and `pretrained=` takes every documented form."
import importlib.util, sys

import pytest
import timm
import torch
import torch.nn.functional as F
from sklearn.datasets import load_sample_images
from timm.data import ImageNetInfo

from fastai_cnntricks.core import CnnTricksError, norm_stats
from fastai_cnntricks.data import digits_dls
from fastai_cnntricks.transfer.learner import timm_learner
from fastai_cnntricks.transfer.weights import (EMBEDDED_ARCHS, create_timm_model, embedded_weights_file,
                                               has_embedded_weights, load_embedded_weights, resolve_pretrained)


def photo(name, size):
    "scikit-learn's sample photo `name`, squashed to `size` x `size`, scaled as the checkpoints expect (mean = std = 0.5)."
    imgs = load_sample_images()
    img = next(im for im, f in zip(imgs.images, imgs.filenames) if f.endswith(name))
    x = torch.tensor(img).permute(2, 0, 1)[None].float() / 255
    x = F.interpolate(x, size=(size, size), mode='bilinear', antialias=True, align_corners=False)
    return (x - 0.5) / 0.5


# china.jpg (a temple by a lake): measured top-5s at native size are all buildings by the water
CHINA_PLAUSIBLE = {442, 449, 460, 483, 497, 538, 663, 668, 698, 825, 832, 900, 975}  # bell cote ... palace, stupa, lakeside
# flower.jpg is a pompon dahlia (no ImageNet class): Lite0 and Lite1 call it a daisy (985); Lite2 sees its tight petal
# pattern as a honeycomb (599), daisy 17th (measured at 260 px)
FLOWER_TOP1 = {'tf_efficientnet_lite0': 985, 'tf_efficientnet_lite1': 985, 'tf_efficientnet_lite2': 599}


@pytest.mark.parametrize('arch', list(EMBEDDED_ARCHS))
def test_embedded_weights_are_real(arch):
    "One forward per arch at its native size (pretrained_cfg: 224, 240, 260) on scikit-learn's two photos."
    model = create_timm_model(arch, 'embedded').eval()
    size = model.pretrained_cfg['input_size'][-1]
    with torch.no_grad(): flower, china = model(torch.cat([photo('flower.jpg', size), photo('china.jpg', size)]))
    names = ImageNetInfo().index_to_description
    top5 = china.topk(5).indices.tolist()
    assert set(top5) <= CHINA_PLAUSIBLE, [names(i) for i in top5]
    assert flower.argmax().item() == FLOWER_TOP1[arch], names(flower.argmax().item())


def test_random_weights_fail_the_photo_check():
    torch.manual_seed(0)
    model = create_timm_model('tf_efficientnet_lite0', pretrained=False).eval()
    with torch.no_grad(): flower, china = model(torch.cat([photo('flower.jpg', 224), photo('china.jpg', 224)]))
    assert not set(china.topk(5).indices.tolist()) <= CHINA_PLAUSIBLE and flower.argmax().item() != 985


def test_auto_means_embedded_where_installed():
    assert all(resolve_pretrained(a, 'auto') == 'embedded' for a in EMBEDDED_ARCHS)
    assert resolve_pretrained('resnet10t', 'auto') is False
    auto = create_timm_model('tf_efficientnet_lite0')
    sd = torch.load(embedded_weights_file(), map_location='cpu', weights_only=True)
    assert torch.equal(auto.blocks[6][0].conv_pwl.weight, sd['_blocks.15._project_conv.weight'])


@pytest.mark.parametrize('arch, size', [('tf_efficientnet_lite0', 224), ('tf_efficientnet_lite1', 240),
                                        ('tf_efficientnet_lite2', 260)])
def test_embedded_archs_are_scaled_by_half(arch, size):
    "The checkpoints take mean = std = 0.5; timm's pretrained_cfg says so for all three, and timm_learner uses it."
    cfg = timm.create_model(arch, pretrained=False).pretrained_cfg
    assert cfg['input_size'] == (3, size, size)
    assert tuple(cfg['mean']) == tuple(cfg['std']) == (0.5, 0.5, 0.5)


def test_timm_learner_normalizes_an_embedded_lite2_by_half():
    learn = timm_learner(digits_dls(size=32, n_per_class=2, bs=8), 'tf_efficientnet_lite2', 'embedded')
    assert norm_stats(learn) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


@pytest.mark.parametrize('arch', list(EMBEDDED_ARCHS))
def test_missing_weights_package_names_its_own_package(arch, monkeypatch):
    module, package = EMBEDDED_ARCHS[arch].module, EMBEDDED_ARCHS[arch].package
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a: None if name == module else find_spec(name, *a))
    assert not has_embedded_weights(arch)
    with pytest.warns(UserWarning, match=rf"random weights.*fastai_cnntricks\[weights\].*{package}"):
        model = create_timm_model(arch, 'auto', n_out=3)
    assert model.get_classifier().out_features == 3
    monkeypatch.setitem(sys.modules, module, None)  # the import fails, as without the package
    with pytest.raises(CnnTricksError, match=rf"{arch} needs the weights package.*\[weights\].*{package}"):
        create_timm_model(arch, 'embedded')


def test_new_head_keeps_pretrained_body():
    full = create_timm_model('tf_efficientnet_lite0', 'embedded')
    ten = create_timm_model('tf_efficientnet_lite0', 'embedded', n_out=10)
    assert ten.get_classifier().out_features == 10
    assert torch.equal(full.conv_stem.weight, ten.conv_stem.weight)
    assert torch.equal(full.blocks[6][0].conv_pwl.weight, ten.blocks[6][0].conv_pwl.weight)


def test_local_checkpoint_path(tmp_path):
    src = create_timm_model('resnet10t', pretrained=False, n_out=7)
    path = tmp_path/'ckpt.pth'
    torch.save(src.state_dict(), path)
    loaded = create_timm_model('resnet10t', pretrained=str(path), n_out=7)
    body = [k for k in src.state_dict() if not k.startswith('fc.')]
    assert all(torch.equal(src.state_dict()[k], loaded.state_dict()[k]) for k in body)
    assert not torch.equal(src.fc.weight, loaded.fc.weight)  # timm re-initializes the head, as for hub weights


def test_mismatched_arch_fails_loudly():
    lite1 = create_timm_model('tf_efficientnet_lite1', pretrained=False)
    with pytest.raises(CnnTricksError, match='247 tensors but tf_efficientnet_lite0 has 322'):
        load_embedded_weights(lite1, 'tf_efficientnet_lite0')
    lite2 = create_timm_model('tf_efficientnet_lite2', pretrained=False)  # as many tensors as Lite1, wider
    with pytest.raises(CnnTricksError, match=r"shape mismatch mapping tf_efficientnet_lite1's _blocks.4._project_conv"
                                             r".weight \(40, 144, 1, 1\) onto blocks.2.0.conv_pwl.weight \(48, "):
        load_embedded_weights(lite2, 'tf_efficientnet_lite1')
    with pytest.raises(CnnTricksError, match='no embedded weights'):
        load_embedded_weights(create_timm_model('resnet10t', pretrained=False))


def test_mapping_is_in_order_shape_for_shape():
    "Each arch's checkpoint maps tensor for tensor onto timm's model; the model's own arch is the default."
    for arch in EMBEDDED_ARCHS:
        model = load_embedded_weights(create_timm_model(arch, pretrained=False))
        sd = torch.load(embedded_weights_file(arch), map_location='cpu', weights_only=True)
        assert torch.equal(model.conv_stem.weight, sd['_conv_stem.weight'])
        assert torch.equal(model.bn2.running_var, sd['_bn1.running_var'])  # the head's norm, after every block
        assert torch.equal(model.classifier.weight, sd['_fc.weight'])


@pytest.mark.parametrize('kwargs, match', [
    (dict(arch='resnet_nope'), 'unknown arch'),
    (dict(arch='resnet10t', pretrained='/no/such/file.pth'), 'neither a checkpoint'),
    (dict(arch='resnet10t', pretrained='embedded'), 'no embedded weights'),
    (dict(arch='resnet10t', pretrained=3), 'not valid'),
])
def test_bad_pretrained_arguments(kwargs, match):
    with pytest.raises(CnnTricksError, match=match): create_timm_model(**kwargs)


def test_weights_file_ships_in_package():
    assert embedded_weights_file().name == 'efficientnet-lite0-57934424.pth'
    assert embedded_weights_file('tf_efficientnet_lite1').name == 'efficientnet-lite1-77cc7160.pth'
    assert embedded_weights_file('tf_efficientnet_lite2').name == 'efficientnet-lite2-9656183e.pth'
