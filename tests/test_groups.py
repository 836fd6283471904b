"`timm_splitter` follows timm's stages; `freeze_to` and group LRs can address them."
import pytest
import torch
from torch import nn
from fastai.vision.all import vision_learner, Learner, norm_types
import timm

from fastai_cnntricks.core import CnnTricksError
from fastai_cnntricks.data import digits_dls, digits_arrays, array_dls
from fastai_cnntricks.transfer import timm_learner, timm_splitter, timm_groups, head_module, group_names

ARCHS = ['resnet10t', 'tf_efficientnet_lite0', 'efficientnet_b0', 'mobilenetv3_small_050', 'convnext_atto',
         'regnetx_002', 'densenet121', 'vit_tiny_patch16_224', 'ghostnet_050']
NORMS = tuple(norm_types) + (nn.GroupNorm,)


@pytest.fixture(scope='module')
def dls(): return digits_dls(size=32, bs=16)


def is_norm_param(model, p):
    return any(isinstance(m, NORMS) and any(q is p for q in m.parameters(recurse=False)) for m in model.modules())


@pytest.mark.parametrize('arch', ARCHS)
def test_stage_groups(arch, dls):
    learn = timm_learner(dls, arch, pretrained=False)
    groups = learn.splitter(learn.model)
    assert len(groups) >= 3
    ids = [id(p) for g in groups for p in g]
    assert sorted(ids) == sorted(id(p) for p in learn.model.parameters()), 'every parameter in exactly one group'
    assert len(ids) == len(set(ids))
    assert {id(p) for p in groups[-1]} == {id(p) for p in head_module(learn.model).parameters()}, 'head last'
    learn.create_opt()
    for k in (1, 2, len(groups) - 1):
        learn.freeze_to(-k)
        for i, g in enumerate(groups):
            for p in g:
                if i >= len(groups) - k: assert p.requires_grad
                elif not is_norm_param(learn.model, p): assert not p.requires_grad, (arch, k, i)


def test_resnet_has_stem_four_stages_and_head(dls):
    learn = timm_learner(dls, 'resnet10t', pretrained=False)
    assert group_names(learn) == ['conv1, bn1', 'layer1', 'layer2', 'layer3', 'layer4', 'fc']


def test_fine_groups_are_blocks():
    model = timm.create_model('tf_efficientnet_lite0', num_classes=3)
    assert len(timm_splitter(model, fine=True)) > len(timm_splitter(model)) >= 9


def test_splitter_works_for_fastai_vision_learner(dls):
    learn = vision_learner(dls, 'resnet10t', pretrained=False, splitter=timm_splitter)
    groups = learn.splitter(learn.model)
    assert len(groups) == 6  # stem + 4 stages (timm) + fastai's head
    assert {id(p) for p in groups[-1]} == {id(p) for p in learn.model[1].parameters()}
    assert sum(len(g) for g in groups) == len(list(learn.model.parameters()))


def test_plain_module_fallback():
    body = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model = nn.Sequential(body, nn.Linear(8, 2))
    groups = timm_groups(model)
    assert [len(g) for g in groups] == [2, 2, 2]
    assert groups[-1][0][1] is model[1].weight
    with pytest.raises(CnnTricksError, match='at least a body and a head'): timm_groups(nn.Linear(2, 2))


def test_discriminative_lrs_reach_each_stage():
    x, y = digits_arrays()
    learn = timm_learner(array_dls(x[:40], y[:40], size=16, bs=10), 'resnet10t', pretrained=False)
    learn.unfreeze()
    with learn.no_bar(): learn.fit(1, slice(1e-5, 1e-3))  # one tiny epoch: each group gets its own LR
    lrs = [h['lr'] for h in learn.opt.hypers]
    assert len(lrs) == 6 and lrs[0] == pytest.approx(1e-5) and lrs[-1] == pytest.approx(1e-3)
    assert all(a < b for a, b in zip(lrs, lrs[1:]))


def test_group_summary(dls, capsys):
    learn = timm_learner(dls, 'tf_efficientnet_lite0')  # embedded weights: starts frozen
    df = learn.group_summary(show=True)
    assert list(df.columns) == ['name', 'params', 'trainable', 'state', 'lr']
    assert df['state'].iloc[-1] == 'trainable' and df['state'].iloc[0] == 'partly (norm layers)'
    assert df['params'].sum() == sum(p.numel() for p in learn.model.parameters())
    assert 'classifier' in capsys.readouterr().out


def _matcher_before_timm_1_0_28(self, coarse=False):
    "ViT's and Eva's group_matcher in timm 1.0.0-1.0.27: no reg_token (pytorch-image-models#2712)."
    return dict(stem=r'^cls_token|pos_embed|patch_embed', blocks=[(r'^blocks\.(\d+)', None), (r'^norm', (99999,))])


@pytest.mark.parametrize('old_timm', [False, True])
@pytest.mark.parametrize('family', ['vit', 'eva'])
def test_register_tokens_group_with_the_embeddings(family, old_timm, dls, monkeypatch):
    "A ViT's or Eva's `reg_token` is thawed with cls_token/pos_embed/patch_embed, first, never with the head."
    from timm.models.vision_transformer import VisionTransformer
    from timm.models.eva import Eva
    cls = VisionTransformer if family == 'vit' else Eva
    if old_timm: monkeypatch.setattr(cls, 'group_matcher', _matcher_before_timm_1_0_28)
    tiny = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=10)
    model = cls(reg_tokens=4, **tiny) if family == 'vit' else cls(num_reg_tokens=4, **tiny)
    groups = [[n for n, _ in g] for g in timm_groups(model)]
    assert {n.split('.')[0] for n in groups[0]} == {'cls_token', 'reg_token', 'pos_embed', 'patch_embed'}
    assert groups[-1] == ['head.weight', 'head.bias'] and not any('reg_token' in g for g in groups[1:])
    assert groups[1][0].startswith('blocks.0.') and groups[2][0].startswith('blocks.1.')  # then Eva's fc_norm, head
    learn = Learner(dls, model, splitter=timm_splitter)
    learn.freeze_to(1)  # every group but the embeddings: the register tokens stay frozen with cls_token
    assert not model.reg_token.requires_grad and not model.cls_token.requires_grad
    assert model.blocks[0].attn.qkv.weight.requires_grad and model.head.weight.requires_grad


def test_register_tokens_in_fastai_vision_learner(dls, monkeypatch):
    "fastai's vision_learner over a timm ViT with registers (pytorch-image-models#2712 in a timm < 1.0.28 matcher)."
    from timm.models.vision_transformer import VisionTransformer
    monkeypatch.setattr(VisionTransformer, 'group_matcher', _matcher_before_timm_1_0_28)
    learn = vision_learner(dls, 'vit_tiny_patch16_224', pretrained=False, splitter=timm_splitter,
                           reg_tokens=4, img_size=32, depth=2)
    groups = [[n for n, _ in g] for g in timm_groups(learn.model)]
    assert '0.model.reg_token' in groups[0] and len(groups) == 4
    assert all(n.startswith('1.') for n in groups[-1])
