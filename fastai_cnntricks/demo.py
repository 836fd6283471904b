"""The main job: fine-tune the embedded pretrained backbone on real data and write an HTML report.

The only place besides `reference.py` that combines the wings: a reference model's invariance check chooses the
augmentation, the transfer recipe trains under it, and the report shows every step. `DEMO_SECTIONS` is the page:
adding a section to the demo report is one line there."""
from __future__ import annotations
import platform, time
from pathlib import Path
from types import SimpleNamespace

import torch
from fastai.vision.all import set_seed, ProgressCallback

from .core import CnnTricksError, check_count, check_seed, check_bool, check_type
from .data import digits_dls, fashion_mnist_dls, folder_dls
from .transfer import timm_learner, timm_model
from .augment import fuse_tfms
from .invariance import quick_invariance_check
from .reference import reference_learner
from .report import (write_report, metrics_section, training_section, groups_section, schedule_section,
                     augmentation_section, invariance_section, suggestion_texts, interpretation_section,
                     attribution_section, confusion_section)

__all__ = ['demo_dls', 'run_demo', 'DEMO_SECTIONS']

MAX_DROP = 0.02  # accuracy drop the reference model tolerates for a transform to be suggested
BUILT_IN_DATA = ('digits', 'fashion-mnist')

# The demo report, in page order: one line per section, each a function of the finished run.
DEMO_SECTIONS = [
    lambda run: metrics_section(run.metrics),
    lambda run: training_section(run.learn),
    lambda run: groups_section(run.learn),
    lambda run: schedule_section(run.learn),
    lambda run: augmentation_section(run.dls, run.tfms, n=8, descriptions=suggestion_texts(run.inv, MAX_DROP)),
    lambda run: invariance_section(run.inv, max_drop=MAX_DROP,
                                   title='Label invariance (reference model: resnet10t from scratch, before training)'),
    lambda run: interpretation_section(run.learn),
    lambda run: attribution_section(run.learn),
    lambda run: confusion_section(run.learn),
]


def _check_data(data):
    "`data` is a built-in data set's name or an existing folder."
    check_type('data', data, (str, Path), "'digits', 'fashion-mnist' or a folder path")
    if str(data) in BUILT_IN_DATA or Path(data).is_dir(): return data
    raise CnnTricksError(f"--data {str(data)!r} is neither 'digits', 'fashion-mnist' nor an existing folder")


def _check_out(out):
    "`out` is a folder to write to: it may exist, as a folder, or not yet."
    check_type('out', out, (str, Path), 'a folder path')
    if Path(out).exists() and not Path(out).is_dir():
        raise CnnTricksError(f"out={str(out)!r} is not valid; it is an existing file, pass a folder for the report")
    return out


def demo_dls(data='digits', size=64, seed=42, n_per_class=None, bs=64, batch_tfms=None):
    "DataLoaders for the demo: 'digits', 'fashion-mnist' (200 training images per class by default) or a folder."
    _check_data(data)
    kw = dict(size=size, seed=seed, bs=bs, batch_tfms=batch_tfms)
    if data == 'digits': dls = digits_dls(n_per_class=n_per_class, **kw)
    elif data == 'fashion-mnist': dls = fashion_mnist_dls(n_per_class=n_per_class or 200, **kw)
    else: dls = folder_dls(Path(data), **kw)
    if len(dls.train) == 0:  # fastai drops the last partial batch: nothing would train
        raise CnnTricksError(f"data={str(data)!r} has {len(dls.train_ds)} training images, fewer than the batch size "
                             f"{bs}; the demo needs at least one full training batch")
    return dls


def run_demo(data='digits',  # 'digits', 'fashion-mnist', or an ImageFolder path
             arch='tf_efficientnet_lite0',  # timm architecture to fine-tune
             epochs=4,  # epochs of `fine_tune_gradual`
             size=64,  # image size in pixels
             out='cnntricks_out',  # report folder
             seed=42,  # random seed
             pretrained='auto',  # weights of `arch` (see `timm_learner`)
             n_per_class=None,  # training images per class (few-shot); None: all
             quiet=False):  # no progress bars
    """The demo: (1) a reference model (resnet10t from scratch, 3 epochs at 32 px) measures which augmentations keep labels;
    (2) `arch` is fine-tuned with `fine_tune_gradual` under the suggested transforms; (3) `out/index.html` reports
    training, schedule, augmentation, invariance and interpretation, and `out/metrics.json` the figures."""
    # every argument is checked before any data is read or any model trained
    _check_data(data)
    check_type('arch', arch, str, 'a timm architecture name (str)')
    check_count('epochs', epochs)
    check_count('size', size)
    _check_out(out)
    check_seed('seed', seed, allow_none=False)
    check_type('pretrained', pretrained, (bool, str, Path), "True, False, 'auto', 'embedded' or a checkpoint path")
    check_count('n_per_class', n_per_class, allow_none=True)
    check_bool('quiet', quiet)
    timm_model(arch, pretrained=False)  # fails fast, before any data loading, on a bad arch
    set_seed(seed, reproducible=True)
    timings, t0 = {}, time.perf_counter()
    # A small model trained from scratch is the reference: a pretrained one would inherit ImageNet's flip invariance.
    ref_dls = demo_dls(data, size=32, seed=seed, n_per_class=n_per_class)
    ref = reference_learner(ref_dls, 'resnet10t', pretrained=False, epochs=3)
    inv = quick_invariance_check(ref, progress=not quiet)
    suggested = inv.suggest_tfms(max_drop=MAX_DROP)
    tfms = fuse_tfms(suggested) if suggested else []
    timings['invariance_s'] = time.perf_counter() - t0
    dls = demo_dls(data, size=size, seed=seed, n_per_class=n_per_class, batch_tfms=tfms)
    learn = timm_learner(dls, arch, pretrained=pretrained)
    if quiet:
        learn.remove_cbs(ProgressCallback)
        learn.logger = lambda *a, **k: None
    t0 = time.perf_counter()
    learn.fine_tune_gradual(epochs)
    timings['fit_s'] = time.perf_counter() - t0
    valid_loss, acc = learn.recorder.values[-1][1:3]  # the last epoch's validation (learn.validate() would log a row)
    metrics = dict(data=str(data), arch=arch, epochs=epochs, size=size, seed=seed, n_train=len(dls.train_ds),
                   n_valid=len(dls.valid_ds), valid_loss=round(float(valid_loss), 4), accuracy=round(float(acc), 4),
                   recipe=f'fine_tune_gradual({epochs})', augmentation=[type(t).__name__ for t in tfms],
                   suggested_transforms=suggestion_texts(inv, MAX_DROP), safe_magnitudes=inv.safe_magnitudes(MAX_DROP),
                   torch_threads=torch.get_num_threads(), machine=platform.machine(), device=str(dls.device))
    t0 = time.perf_counter()
    run = SimpleNamespace(learn=learn, dls=dls, tfms=tfms, inv=inv, metrics=metrics)
    sections = [make(run) for make in DEMO_SECTIONS]
    timings['report_s'] = time.perf_counter() - t0
    metrics.update({k: round(v, 1) for k, v in timings.items()})
    path = write_report(out, f'fastai_cnntricks demo: {arch} on {data}', sections, metrics)
    metrics['report'] = str(path)
    return metrics
