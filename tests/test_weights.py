"The embedded ImageNet weights are real, and `pretrained=` takes every documented form."
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_sample_images

from fastai_cnntricks.core import CnnTricksError
from fastai_cnntricks.transfer.weights import create_timm_model, embedded_weights_file, load_embedded_weights


def flower_224():
    imgs = load_sample_images()
    img = next(im for im, f in zip(imgs.images, imgs.filenames) if f.endswith('flower.jpg'))
    x = torch.tensor(img).permute(2, 0, 1)[None].float() / 255
    x = F.interpolate(x, size=(224, 224), mode='bilinear', antialias=True, align_corners=False)
    return (x - 0.5) / 0.5  # the checkpoint's preprocessing: mean = std = 0.5


def test_embedded_weights_classify_the_daisy():
    model = create_timm_model('tf_efficientnet_lite0', 'embedded').eval()
    with torch.no_grad(): probs = model(flower_224()).softmax(1)
    assert probs.argmax().item() == 985  # ImageNet 'daisy'


def test_auto_means_embedded_for_lite0_and_random_init_is_not_daisy():
    x = flower_224()
    auto = create_timm_model('tf_efficientnet_lite0').eval()
    torch.manual_seed(0)
    rand = create_timm_model('tf_efficientnet_lite0', pretrained=False).eval()
    with torch.no_grad():
        assert auto(x).argmax().item() == 985
        assert not torch.allclose(auto(x), rand(x))


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
    model = create_timm_model('tf_efficientnet_lite1', pretrained=False)
    with pytest.raises(CnnTricksError, match='mismatch|tensors'):
        load_embedded_weights(model)


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
