"""The reference behind `label_invariance_check`: small from-scratch CNNs *allowed to learn the invariance*.

One `LabelNet` per transform, with one linear head per nested magnitude range of the sweep on one shared body: head
k is trained on images transformed at magnitudes drawn up to the sweep's k-th magnitude (head 0: clean images only).
If the label survives up to magnitude m_k, head k classifies images transformed at m_k as well as head 0 classifies
clean ones; if the label changes (a 6 turned by 180° is a 9), head k's training data holds the same image under two
labels and its errors land on the colliding pair. One training per transform serves every magnitude (the heads cost
nothing), and two folds give every image an out-of-fold answer for the cost of one training on all of them.

Everything runs on in-memory image-space tensors (floats in [0, 1], resized to `size` px) with a plain torch loop:
no DataLoader, no callbacks, one `grid_sample` per group of images sharing a magnitude.
"""
from __future__ import annotations
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from fastai.data.load import DataLoader
from fastai.torch_core import TensorImage

from ..core import CnnTricksError
from .sweep import image_space_dl, seeded

__all__ = ['LabelNet', 'image_tensors', 'fold_ids', 'train_reference', 'reference_predictions', 'OutOfFold']


class LabelNet(nn.Module):
    "A 4-stage BatchNorm CNN (`width`, 2x, 2x, 4x channels) with `n_heads` linear classifiers on one body."
    def __init__(self, c_in, n_classes, n_heads=1, width=32, mean=None, std=None):
        super().__init__()
        ch, layers = [c_in, width, 2 * width, 2 * width, 4 * width], []
        for i in range(4):
            layers += [nn.Conv2d(ch[i], ch[i + 1], 3, padding=1, bias=False), nn.BatchNorm2d(ch[i + 1]),
                       nn.ReLU(inplace=True)]
            if i < 3: layers.append(nn.MaxPool2d(2))
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.heads = nn.Linear(ch[-1], n_heads * n_classes)
        self.n_heads, self.n_classes = n_heads, n_classes
        self.register_buffer('mean', torch.zeros(1, c_in, 1, 1) if mean is None else mean.view(1, c_in, 1, 1))
        self.register_buffer('std', torch.ones(1, c_in, 1, 1) if std is None else std.view(1, c_in, 1, 1))

    def forward(self, x):  # (N, n_heads, n_classes) logits
        x = (x.as_subclass(torch.Tensor) - self.mean) / self.std
        return self.heads(self.body(x)).view(len(x), self.n_heads, self.n_classes)


def _loaders(dls):
    if isinstance(dls, DataLoader): return [dls]
    loaders = [dl for dl in getattr(dls, 'loaders', [])[:2] if dl is not None]  # train, valid (not a test set)
    if not loaders: raise CnnTricksError(f"dls={type(dls).__name__} is not valid; pass fastai DataLoaders (or one "
                                         "DataLoader)")
    return loaders


def image_tensors(dls, size, n_items=None):
    """(images (N, C, size, size) in image space, int64 labels (N,)): every item of the DataLoaders' training and
    validation sets, in order, without their random augmentations, resized (antialiased) to `size` px."""
    xs, ys, seen = [], [], 0
    for dl in _loaders(dls):
        if not hasattr(dl, 'after_batch'):
            raise CnnTricksError(f"dls holds a {type(dl).__name__}; pass fastai DataLoaders with batch transforms")
        img_dl, _ = image_space_dl(dl)
        for b in img_dl:
            if n_items is not None and seen >= n_items: break
            if len(b) != 2: raise CnnTricksError("label_invariance_check needs batches (images, labels); got "
                                                 f"{len(b)} elements per batch")
            x, y = b[0].as_subclass(torch.Tensor).float().cpu(), b[1]
            if not isinstance(y, torch.Tensor) or y.ndim != 1 or y.is_floating_point():
                raise CnnTricksError("label_invariance_check needs single-label classification data (integer class "
                                     f"targets of shape (N,)); got targets of shape {tuple(getattr(y, 'shape', ()))}")
            if x.ndim != 4: raise CnnTricksError(f"label_invariance_check needs image batches (N, C, H, W); got "
                                                 f"{tuple(x.shape)}")
            if tuple(x.shape[-2:]) != (size, size):
                x = F.interpolate(x, size=(size, size), mode='bilinear', antialias=True, align_corners=False)
            xs.append(x.clamp(0, 1)); ys.append(y.as_subclass(torch.Tensor).long().cpu())
            seen += len(x)
    if not xs: raise CnnTricksError("the DataLoaders are empty; label_invariance_check needs items")
    x, y = torch.cat(xs), torch.cat(ys)
    return (x[:n_items], y[:n_items]) if n_items is not None else (x, y)


def fold_ids(y, n_folds=2, seed=0):
    "A fold number per item, stratified by class (each class split as evenly as the folds allow)."
    rng, f = np.random.default_rng(seed), np.zeros(len(y), dtype=np.int64)
    y = np.asarray(y)
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        f[idx] = (np.arange(len(idx)) + rng.integers(n_folds)) % n_folds
    return f


def _severities(ft, ms):
    "The sweep's magnitudes after the neutral one, and their severities (distance from neutral), in sweep order."
    rest = [m for m in ms if ft.severity(m) > 0]
    return rest, [ft.severity(m) for m in rest]


def _symmetric(ft):
    "Train with both signs (a rotation by -m as well as +m), as the fastai transform suggested for m draws them."
    lo, hi = ft.valid
    return ft.continuous and lo is not None and hi is not None and lo < ft.neutral < hi and \
        math.isclose(ft.neutral - lo, hi - ft.neutral)


def _draw(ft, rest, sevs, level, rng):
    "A magnitude of `level` (1-based): severity uniform between the previous level's and this one's, random sign."
    m = rest[level - 1]
    if not ft.continuous: return m
    lo = sevs[level - 2] if level > 1 else 0.
    s = rng.uniform(lo, sevs[level - 1])
    sign = math.copysign(1., m - ft.neutral)
    if _symmetric(ft) and rng.random() < .5: sign = -sign
    return ft.neutral + sign * s


def _level_probs(ft, sevs, p_clean):
    "Probability of each level: `p_clean` for 0; the rest half uniform over levels, half by width (uniform magnitude)."
    K = len(sevs)
    if K == 0: return np.ones(1)
    width = np.diff(np.r_[0., sevs]) if ft.continuous else np.ones(K)
    return np.r_[p_clean, (1 - p_clean) * (.5 / K + .5 * width / width.sum())]


def _head_weights(ft, sevs, p_clean):
    """(K+1, K+1) weight of a sample of level j in head k's loss, so that head k trains on clean images with
    probability `p_clean` and otherwise on magnitudes uniform up to the k-th (an on/off transform: always at it),
    as a fastai transform with p = 1 - p_clean at that magnitude draws them; zero above k."""
    K, p = len(sevs), _level_probs(ft, sevs, p_clean)
    W = np.zeros((K + 1, K + 1))
    W[:, 0] = 1.  # clean images: p_clean / p[0]
    width = np.diff(np.r_[0., sevs]) if ft is not None and ft.continuous else np.ones(K)
    for k in range(1, K + 1):
        share = width[:k] / width[:k].sum() if ft.continuous else np.eye(K)[k - 1]
        W[k, 1:k + 1] = (1 - p_clean) * share / p[1:k + 1]
        W[k, 0] = p_clean / p[0]
    return W


def train_reference(x, y, n_classes, ft=None, ms=(), epochs=8, bs=64, lr=4e-3, width=32, groups=4, p_clean=.25,
                    seed=0, device=None):
    """A `LabelNet` trained from scratch on (`x`, `y`) with one head per nested range of `ft`'s sweep `ms`
    (head 0 clean; `ft=None`: a single clean head). Each batch is cut into `groups` groups; each group draws a level
    (0 with probability `p_clean`, else uniform), is transformed at a magnitude drawn within its level and trains
    the heads of that level and above. Levels are drawn uniformly so that the heads of small ranges get data, and
    weighted by their width so that head k learns from magnitudes uniform up to the k-th (an on/off transform: half
    clean, half transformed), as a fastai transform at that magnitude draws them. One-cycle AdamW. Returns the model
    in eval mode."""
    device = device or torch.device('cpu')
    rest, sevs = _severities(ft, ms) if ft is not None else ([], [])
    K = len(rest)
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)  # initialization and the random transforms (noise) of the training draws
    net = LabelNet(x.shape[1], n_classes, K + 1, width, x.mean((0, 2, 3)), x.std((0, 2, 3)).clamp_min(1e-3))
    net.to(device).train()
    bs = min(bs, len(x))
    steps = epochs * (len(x) // bs)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1), pct_start=.25)
    probs = _level_probs(ft, sevs, p_clean)
    W = torch.as_tensor(_head_weights(ft, sevs, p_clean), dtype=torch.float32, device=device)  # (head, level)
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for s in range(len(x) // bs):
            idx = perm[s * bs:(s + 1) * bs]
            xb, yb = x[idx].to(device), y[idx].to(device)
            levels = np.zeros(len(idx), dtype=np.int64)
            if K:
                parts, lv = [], []
                for chunk in torch.tensor_split(torch.arange(len(idx)), groups):
                    level = int(rng.choice(K + 1, p=probs))
                    xc = xb[chunk]
                    if level: xc = ft(TensorImage(xc), _draw(ft, rest, sevs, level, rng)).as_subclass(torch.Tensor)
                    parts.append(xc); lv.append(np.full(len(chunk), level))
                xb, levels = torch.cat(parts), np.concatenate(lv)
            out = net(xb)  # (B, K+1, C)
            mask = W[:, torch.as_tensor(levels, device=device)].T  # (B, K+1): each sample's weight in each head
            ce = F.cross_entropy(out.reshape(-1, n_classes), yb.repeat_interleave(K + 1), reduction='none')
            loss = ((ce.view(-1, K + 1) * mask).sum(0) / mask.sum(0).clamp_min(1)).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step(); sched.step()
    return net.eval()


def reference_predictions(net, x, ft=None, ms=(), bs=256, seed=0, device=None):
    """(clean (N, K+1): every head's prediction on the clean images; transformed (N, K): head k's prediction on the
    images transformed at the k-th magnitude of the sweep). Random transforms draw from `seed`, per batch."""
    device = device or torch.device('cpu')
    rest = _severities(ft, ms)[0] if ft is not None else []
    clean, aug = [], []
    with torch.no_grad():
        for bi, s in enumerate(range(0, len(x), bs)):
            xb = TensorImage(x[s:s + bs].to(device))
            clean.append(net(xb).argmax(2).cpu())
            cols = []
            for k, m in enumerate(rest):
                with seeded(ft, seed + 7919 * bi + k, device): xa = ft(xb, m)
                cols.append(net(xa)[:, k + 1].argmax(1).cpu())
            aug.append(torch.stack(cols, 1) if cols else torch.zeros(len(xb), 0, dtype=torch.long))
    return torch.cat(clean).numpy(), torch.cat(aug).numpy()


class OutOfFold(nn.Module):
    """The clean references of all folds as one classifier over `OutOfFold.loader`'s batches: each batch holds
    items of one fold and is answered by the reference that did not train on them (so `run_sweep` can sweep it)."""
    def __init__(self, nets):
        super().__init__()
        self.nets, self.active = nn.ModuleList(nets), 0

    def forward(self, x): return self.nets[self.active](x)[:, 0]

    def loader(self, x, y, folds, bs=256):
        "A minimal DataLoader for `run_sweep`: the items fold by fold, and (`order`) their indices in `x`."
        return _FoldLoader(self, x, y, folds, bs)


class _FoldLoader:
    def __init__(self, model, x, y, folds, bs):
        self.model, self.bs, self.c = model, bs, int(model.nets[0].n_classes)
        self.order = np.concatenate([np.flatnonzero(folds == f) for f in range(len(model.nets))])
        self.batches = [(f, idx[s:s + bs]) for f in range(len(model.nets))
                        for idx in [np.flatnonzero(folds == f)] for s in range(0, len(idx), bs)]
        self.x, self.y = x, y

    def __len__(self): return len(self.batches)

    def __iter__(self):
        for f, idx in self.batches:
            self.model.active = f  # the batch is answered by the reference trained without fold f
            yield TensorImage(self.x[idx]), self.y[idx]
