"Start the new head from a converged linear probe on the frozen body's features (the LP of LP-FT), not from noise."
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from fastcore.basics import patch
from fastai.learner import Learner
from fastai.vision.augment import RandTransform

from ..core import CnnTricksError, check_positive
from .groups import head_module
from .forgetting import body_features

__all__ = ['train_features', 'probe_init_head']


def train_features(learn: Learner, dl=None, max_batches: int | None = None):
    """Body features (eval mode, no grad) and labels of the training items, unshuffled and without random
    augmentation (the probe should see the images as validation does); the first `max_batches` batches only if set."""
    if dl is None:
        dl = learn.dls.train
        dl = dl.new(shuffle=False, drop_last=False,
                    after_batch=[t for t in dl.after_batch.fs if not isinstance(t, RandTransform)])
    fs, ys = [], []
    for i, (xb, yb) in enumerate(dl):
        if max_batches is not None and i >= max_batches: break
        fs.append(body_features(learn.model, xb)); ys.append(yb)
    return torch.cat(fs), torch.cat(ys)


@patch
def probe_init_head(self: Learner,
                    wd: float | None = None,  # L2 on the probe's weights (None: 1/n for n images, sklearn's C = 1)
                    max_iter: int = 100,  # L-BFGS iterations
                    dl=None,  # items to fit on (default: the training set, unshuffled, no random augmentation)
                    max_batches: int | None = None):  # fit on the first batches only (a quick reference probe)
    """Fit the head as a multinomial logistic regression on the frozen body's features (L-BFGS, to convergence) and
    load it into the classifier. With 10 images per class an SGD head sees ~15 steps in 5 epochs; this one converges.
    The default L2 is scikit-learn's `LogisticRegression()` (C = 1 on the summed loss is 1/n on the mean loss)."""
    if wd is not None: check_positive('wd', wd, allow_zero=True)
    head = head_module(getattr(self.model, 'module', self.model))
    if not isinstance(head, nn.Linear):
        raise CnnTricksError(f"probe_init_head needs a linear classifier as the head, found {type(head).__name__}")
    if max_batches is not None: check_positive('max_batches', max_batches)
    x, y = train_features(self, dl, max_batches)
    if x.shape[1] != head.in_features:
        raise CnnTricksError(f"body features have {x.shape[1]} dims but the head takes {head.in_features}")
    x = x.as_subclass(torch.Tensor).float()  # plain tensors: fastai's TensorImage/TensorCategory dispatch gets in the way
    w = torch.zeros(head.out_features, x.shape[1], requires_grad=True)
    b = torch.zeros(head.out_features, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=max_iter, line_search_fn='strong_wolfe')
    y = y.as_subclass(torch.Tensor).long().cpu(); x = x.cpu()
    if wd is None: wd = 1. / len(y)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w.T + b, y) + wd / 2 * w.pow(2).sum()
        loss.backward()
        return loss
    with torch.enable_grad(): opt.step(closure)
    with torch.no_grad():
        head.weight.copy_(w.detach().to(head.weight)); head.bias.copy_(b.detach().to(head.bias))
    return self
