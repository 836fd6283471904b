"The main job: fine-tune the embedded pretrained backbone on real data and write an HTML report."
from __future__ import annotations
import platform, time
from pathlib import Path

import torch
from fastai.vision.all import set_seed, ProgressCallback

from .core import CnnTricksError, check_positive
from .data import digits_dls, fashion_mnist_dls, folder_dls
from .transfer import timm_learner, groups_section_html, schedule_section_html
from .transfer.weights import create_timm_model
from .augment import reference_learner, quick_invariance_check, invariance_section, augmentation_section, fuse_tfms
from .interpret import interpretation_section
from . import report

__all__ = ['demo_dls', 'run_demo']


def demo_dls(data='digits', size=64, seed=42, n_per_class=None, bs=64, batch_tfms=None):
    "DataLoaders for the demo: 'digits', 'fashion-mnist' (200 training images per class by default) or a folder."
    kw = dict(size=size, seed=seed, bs=bs, batch_tfms=batch_tfms)
    if data == 'digits': return digits_dls(n_per_class=n_per_class, **kw)
    if data == 'fashion-mnist': return fashion_mnist_dls(n_per_class=n_per_class or 200, **kw)
    path = Path(data)
    if not path.exists():
        raise CnnTricksError(f"--data {data!r} is neither 'digits', 'fashion-mnist' nor an existing folder")
    return folder_dls(path, **kw)


def run_demo(data='digits', arch='tf_efficientnet_lite0', epochs=4, size=64, out='cnntricks_out', seed=42,
             pretrained='auto', n_per_class=None, quiet=False):
    """The demo: (1) a reference model (resnet10t from scratch, 3 epochs at 32 px) measures which augmentations keep labels;
    (2) `arch` is fine-tuned with `fine_tune_gradual` under the suggested transforms; (3) `out/index.html` reports
    training, schedule, augmentation, invariance and interpretation, and `out/metrics.json` the figures."""
    check_positive('epochs', epochs); check_positive('size', size)
    if not isinstance(epochs, int): raise CnnTricksError(f"epochs={epochs!r} must be a whole number of epochs")
    create_timm_model(arch, pretrained=False)  # fails fast, before any data loading, on a bad arch
    set_seed(seed, reproducible=True)
    timings, t0 = {}, time.perf_counter()
    # A small model trained from scratch is the reference: a pretrained one would inherit ImageNet's flip invariance.
    ref = reference_learner(demo_dls(data, 32, seed, n_per_class), 'resnet10t', pretrained=False, epochs=3)
    inv = quick_invariance_check(ref, progress=not quiet)
    suggested = inv.suggest_tfms(max_drop=0.02)
    tfms = fuse_tfms(suggested) if suggested else []
    timings['invariance_s'] = time.perf_counter() - t0
    dls = demo_dls(data, size, seed, n_per_class, batch_tfms=tfms)
    learn = timm_learner(dls, arch, pretrained=pretrained)
    if quiet: learn.remove_cbs(ProgressCallback); learn.logger = lambda *a, **k: None  # noqa: E702
    t0 = time.perf_counter()
    learn.fine_tune_gradual(epochs)
    timings['fit_s'] = time.perf_counter() - t0
    valid_loss, acc = learn.recorder.values[-1][1:3]  # the last epoch's validation (learn.validate() would log a row)
    metrics = dict(data=str(data), arch=arch, epochs=epochs, size=size, seed=seed, n_train=len(dls.train_ds),
                   n_valid=len(dls.valid_ds), valid_loss=round(float(valid_loss), 4), accuracy=round(float(acc), 4),
                   recipe=f'fine_tune_gradual({epochs})', augmentation=[type(t).__name__ for t in tfms],
                   safe_magnitudes=inv.safe_magnitudes(0.02), torch_threads=torch.get_num_threads(),
                   machine=platform.machine(), device=str(dls.device))
    t0 = time.perf_counter()
    sections = [report.metrics_section(metrics), report.training_section(learn), groups_section_html(learn),
                schedule_section_html(learn), augmentation_section(dls, tfms, n=8),
                invariance_section(inv, title='Label invariance (reference model: resnet10t from scratch, before training)'),
                interpretation_section(learn), report.confusion_section(learn)]
    timings['report_s'] = time.perf_counter() - t0
    metrics.update({k: round(v, 1) for k, v in timings.items()})
    path = report.write_report(out, f'fastai_cnntricks demo: {arch} on {data}', sections, metrics)
    metrics['report'] = str(path)
    return metrics
