"""A reference model before any model of the user's is trained: a pretrained backbone with a linear probe.

The invariance check needs a classifier. Before training, the embedded ImageNet backbone (tf_efficientnet_lite0)
with a linear classifier fitted on the frozen features of a few training batches is a cheap stand-in: its safe
magnitudes and class transitions (6 → 9 under 180° rotation) guide the choice of augmentation for the real run.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from fastai.vision.augment import RandTransform

from ..core import CnnTricksError, check_positive, preserve_model, model_device

__all__ = ['reference_learner', 'fit_linear_probe']


def _features(model, dl, n_batches):
    "Pooled pre-logit features and labels of the first `n_batches` batches of `dl`."
    dev, fs, ys = model_device(model), [], []
    for i, (xb, yb) in enumerate(dl):
        if i >= n_batches: break
        xb = xb.to(dev).as_subclass(torch.Tensor)  # plain tensors: fastai's subclasses have no cross_entropy pairing
        fs.append(model.forward_head(model.forward_features(xb), pre_logits=True).float())
        ys.append(yb.to(dev).as_subclass(torch.Tensor))
    return torch.cat(fs), torch.cat(ys)


def fit_linear_probe(learn, n_batches=8, steps=100, weight_decay=1e-3):
    """Fit the classifier of a timm `learn.model` on the frozen features of `n_batches` training batches (no random
    augmentation), full-batch L-BFGS on cross-entropy with L2 `weight_decay`. Only the classifier changes."""
    model = learn.model
    if not (hasattr(model, 'forward_features') and hasattr(model, 'forward_head') and hasattr(model, 'get_classifier')):
        raise CnnTricksError("fit_linear_probe needs a timm model (forward_features, forward_head, get_classifier)")
    clf = model.get_classifier()
    if not isinstance(clf, torch.nn.Linear):
        raise CnnTricksError(f"the model's classifier is {type(clf).__name__}; a linear probe needs an nn.Linear")
    check_positive('n_batches', n_batches)
    dl = learn.dls.train
    dl = dl.new(shuffle=False, drop_last=False, after_batch=[t for t in dl.after_batch.fs
                                                            if not isinstance(t, RandTransform)])
    with preserve_model(model), torch.no_grad():
        model.eval()
        feats, ys = _features(model, dl, n_batches)
    w = torch.zeros_like(clf.weight, requires_grad=True)
    b = torch.zeros_like(clf.bias, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn='strong_wolfe')
    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(feats @ w.T + b, ys) + weight_decay * (w ** 2).sum()
        loss.backward()
        return loss
    opt.step(closure)
    with torch.no_grad(): clf.weight.copy_(w); clf.bias.copy_(b)
    return learn


def reference_learner(dls, arch='tf_efficientnet_lite0', pretrained='embedded', n_batches=8, **kwargs):
    """A Learner for the invariance check before training: timm `arch` with pretrained weights (embedded ImageNet
    weights by default), body frozen, and a linear probe fitted on `n_batches` training batches."""
    from ..transfer.learner import timm_learner
    learn = timm_learner(dls, arch, pretrained=pretrained, **kwargs)
    return fit_linear_probe(learn, n_batches)
