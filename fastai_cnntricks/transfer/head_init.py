"Start the new head from a converged linear probe on the frozen body's features (the LP of LP-FT), not from noise."
from __future__ import annotations

import torch
from torch import nn
from fastcore.basics import patch
from fastai.learner import Learner
from fastai.vision.augment import RandTransform

from ..core import CnnTricksError, check_count, check_positive, fit_logistic_head, preserve_model, unwrap_ddp
from .groups import head_module

__all__ = ['classifier_layer', 'train_features', 'probe_init_head']


def classifier_layer(model: nn.Module) -> nn.Linear:
    "The head's last `nn.Linear`: timm's classifier itself, or the end of fastai's `vision_learner` head (pool, BN, ...)."
    head = head_module(unwrap_ddp(model))
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise CnnTricksError(f"probe_init_head needs a linear classifier in the head, found {type(head).__name__} "
                             "without an nn.Linear")
    return linears[-1]


def _train_loader(learn: Learner, keep_random: bool):
    "The training items unshuffled, all of them, with (`keep_random`) or without the random batch transforms."
    dl = learn.dls.train
    if type(dl).__name__ == 'DistributedDL': dl = dl.dl  # every rank fits the same probe on the whole training set
    fs = getattr(dl.after_batch, 'fs', None)  # a Pipeline; a plain TfmdDL may hold a bare function (no random tfms to drop)
    extra = {} if fs is None or keep_random else dict(after_batch=[t for t in fs if not isinstance(t, RandTransform)])
    return dl.new(shuffle=False, drop_last=False, **extra)


def train_features(learn: Learner, dl=None, max_batches: int | None = None,
                   aug_copies: int = 0):  # passes of the training set *with* its random batch transforms, added after the clean one
    """The features that reach the classifier's last Linear (eval mode, no grad) and labels of the training items,
    unshuffled and without random augmentation (the probe should see the images as validation does); the first
    `max_batches` batches only if set. `aug_copies` > 0 (with `dl=None`) appends that many augmented copies of the
    training set, drawn by the training DataLoader's own random batch transforms."""
    check_count('aug_copies', aug_copies, allow_zero=True)
    if aug_copies and dl is not None:
        raise CnnTricksError("aug_copies needs dl=None: the augmented copies are drawn by the training DataLoader")
    model = unwrap_ddp(learn.model)
    clf, feats = classifier_layer(model), []
    dls = [dl] if dl is not None else [_train_loader(learn, keep_random=False)] + \
        [_train_loader(learn, keep_random=True)] * aug_copies
    ys = []
    with preserve_model(model), torch.no_grad():
        model.eval()
        hook = clf.register_forward_pre_hook(lambda m, inp: feats.append(inp[0].detach().flatten(1)))
        try:
            for d in dls:
                for i, (xb, yb) in enumerate(d):
                    if max_batches is not None and i >= max_batches: break
                    model(xb); ys.append(yb)
        finally: hook.remove()
    return torch.cat(feats), torch.cat(ys)


@patch
def probe_init_head(self: Learner,
                    wd: float | None = None,  # L2 on the probe's weights (None: 1/n for n images, sklearn's C = 1)
                    max_iter: int = 100,  # L-BFGS iterations
                    dl=None,  # items to fit on (default: the training set, unshuffled, no random augmentation)
                    max_batches: int | None = None,  # fit on the first batches only (a quick reference probe)
                    aug_copies: int = 0):  # also fit on this many augmented copies of the training set (its random batch tfms)
    """Fit the head as a multinomial logistic regression on the frozen body's features (L-BFGS, to convergence) and
    load it into the classifier. With 10 images per class an SGD head sees ~15 steps in 5 epochs; this one converges.
    The default L2 is scikit-learn's `LogisticRegression()` (C = 1 on the summed loss is 1/n on the mean loss), n
    the number of training images (augmented copies add invariance, not a weaker prior). With `aug_copies` the probe also sees the training DataLoader's augmentations: the
    head then starts invariant to them instead of meeting them first at SGD's few steps."""
    if wd is not None: check_positive('wd', wd, allow_zero=True)
    check_count('max_iter', max_iter); check_count('max_batches', max_batches, allow_none=True)
    head = classifier_layer(self.model)  # train_features checks aug_copies before any forward pass
    x, y = train_features(self, dl, max_batches, aug_copies=aug_copies)
    if wd is None and aug_copies: wd = (1 + aug_copies) / len(y)  # 1/n for the n images the copies come from
    if x.shape[1] != head.in_features:
        raise CnnTricksError(f"body features have {x.shape[1]} dims but the head takes {head.in_features}")
    fit_logistic_head(head, x, y, wd=wd, max_iter=max_iter)
    return self
