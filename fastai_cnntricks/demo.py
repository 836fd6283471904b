"The main job: fine-tune the embedded pretrained backbone on real data and write an HTML report."
from __future__ import annotations
import platform, time
from pathlib import Path

import torch
from fastai.vision.all import set_seed, ProgressCallback

from .core import CnnTricksError, check_positive
from .data import digits_dls, fashion_mnist_dls, folder_dls
from .transfer import timm_learner, GroupHistory
from .transfer.weights import create_timm_model
from . import report

__all__ = ['demo_dls', 'run_demo']


def demo_dls(data='digits', size=64, seed=42, n_per_class=None, bs=64):
    "DataLoaders for the demo: 'digits', 'fashion-mnist' (200 training images per class by default) or a folder."
    if data == 'digits': return digits_dls(size=size, seed=seed, bs=bs, n_per_class=n_per_class)
    if data == 'fashion-mnist': return fashion_mnist_dls(size=size, n_per_class=n_per_class or 200, seed=seed, bs=bs)
    path = Path(data)
    if not path.exists():
        raise CnnTricksError(f"--data {data!r} is neither 'digits', 'fashion-mnist' nor an existing folder")
    return folder_dls(path, size=size, seed=seed, bs=bs)


def train(learn, epochs, lr=1e-3):
    """The demo's recipe, chosen by measurement (README): everything trainable, one-cycle Adam at `lr`.
    Freezing the body first (fastai's `fine_tune`) reached only 24.5% on digits at 64 px in 4 epochs."""
    learn.unfreeze()
    learn.fit_one_cycle(epochs, lr)


def run_demo(data='digits', arch='tf_efficientnet_lite0', epochs=4, size=64, out='cnntricks_out', seed=42,
             pretrained='auto', n_per_class=None, quiet=False):
    "Fine-tune `arch` on `data`, then write `out/index.html` and `out/metrics.json`. Returns the metrics."
    check_positive('epochs', epochs); check_positive('size', size)
    if not isinstance(epochs, int): raise CnnTricksError(f"epochs={epochs!r} must be a whole number of epochs")
    create_timm_model(arch, pretrained=False) if arch else None  # fails fast, before data loading, on a bad arch
    set_seed(seed, reproducible=True)
    dls = demo_dls(data, size, seed, n_per_class)
    learn = timm_learner(dls, arch, pretrained=pretrained, cbs=GroupHistory())
    if quiet: learn.remove_cbs(ProgressCallback); learn.logger = lambda *a, **k: None  # noqa: E702
    t0 = time.perf_counter()
    train(learn, epochs)
    fit_s = time.perf_counter() - t0
    valid_loss, acc = learn.recorder.values[-1][1:3]  # the last epoch's validation (learn.validate() would log a row)
    metrics = dict(data=str(data), arch=arch, epochs=epochs, size=size, seed=seed, n_train=len(dls.train_ds),
                   n_valid=len(dls.valid_ds), valid_loss=round(float(valid_loss), 4), accuracy=round(float(acc), 4),
                   fit_seconds=round(fit_s, 1), torch_threads=torch.get_num_threads(), machine=platform.machine(),
                   device=str(dls.device))
    sections = [report.metrics_section(metrics), report.training_section(learn),
                report.groups_section(learn, learn.group_history), report.confusion_section(learn)]
    path = report.write_report(out, f'fastai_cnntricks demo: {arch} on {data}', sections, metrics)
    metrics['report'] = str(path)
    return metrics
