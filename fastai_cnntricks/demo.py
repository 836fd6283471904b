"""The main job: fine-tune the embedded pretrained backbone on real data and write an HTML report.

The only place besides `reference.py` that combines the wings: the label check (`label_invariance_check` on the
training images) says which augmentations keep labels, the policy `POLICY` builds the augmentation from its answer,
the transfer recipe trains under it, and the report shows every step. `DEMO_SECTIONS` is the page: adding a section
to the demo report is one line there; `POLICIES` holds the policies the demo can train with."""
from __future__ import annotations
import platform, time
from pathlib import Path
from types import SimpleNamespace

import torch
from fastai.vision.all import set_seed, ProgressCallback

from .core import CnnTricksError, check_count, check_seed, check_bool, check_type
from .data import digits_dls, fashion_mnist_dls, folder_dls
from .transfer import timm_learner, timm_model
from .augment import bounded_trivial_augment, class_conditional_tfms
from .invariance import label_invariance_check, QUICK_SWEEP
from .report import (write_report, metrics_section, training_section, groups_section, schedule_section,
                     augmentation_section, invariance_section, suggestion_texts, interpretation_section,
                     attribution_section, confusion_section)

__all__ = ['demo_dls', 'run_demo', 'DEMO_SECTIONS']

MAX_DROP = 0.02  # label drop tolerated (a fraction: 2 points) for a magnitude to count as label-preserving
BUILT_IN_DATA = ('digits', 'fashion-mnist')

# The label check of the demo, on the training images only (the validation labels stay unseen): the quick sweep
# (8 transforms, rotation out to 180°) at `label_invariance_check`'s defaults otherwise. Measured on the 1,348 digits
# training images (2 threads): 88 s at 12 epochs, 54 s at 6, but at 6 the references have not learnt shifts yet (a
# shift of 0.1 reads as label-changing); both find 6 → 9 among the collisions of a half turn.
LABEL_CHECK = dict(tfms=list(QUICK_SWEEP), magnitudes=QUICK_SWEEP, epochs=12, size=16)


def _policy_words(safe, units):
    "'rotate ≤ 15 °, shift ≤ 0.1 × size, ...' for the transforms whose label-safe magnitude is not neutral."
    return ', '.join(f'{k} ≤ {v:g}{" " + units[k] if units[k] else ""}' for k, v in safe.items() if v is not None)


def _label_safe(inv):
    "The label check's suggestion: label-safe magnitudes, robustness as a soft preference, fused into one pass."
    return inv.suggest_tfms(max_drop=MAX_DROP), [f'label-safe suggestion: {t}' for t in suggestion_texts(inv, MAX_DROP)]


def _bounded_trivial(inv):
    "TrivialAugment bounded by the label check: one operation per image, magnitude uniform up to its label-safe limit."
    safe = {k: v for k, v in inv.safe_magnitudes(MAX_DROP).items() if inv.tfms[k].severity(v) > 0}
    words = _policy_words(safe, {k: inv.tfms[k].unit for k in safe})
    return bounded_trivial_augment(safe), [f'bounded TrivialAugment: one of {words or "nothing"} per image']


def _class_conditional(inv):
    "Each transform applied only to the classes whose label it keeps, up to each class's own limit."
    table = inv.safe_magnitudes(MAX_DROP, per_class=True)
    return class_conditional_tfms(table, inv.vocab), [f'class-conditional: {c} per class up to its own label-safe '
                                                      f'limit' for c in table.columns]


# The augmentation policies the demo can train with: name -> policy(label report) -> (batch tfms, description lines).
POLICIES = {'label_safe': _label_safe, 'bounded_trivial': _bounded_trivial, 'class_conditional': _class_conditional,
            'none': lambda inv: ([], ['no augmentation: in the few-shot payoff bench (bench/results/label_payoff.md) '
                                      'a policy beat it only together with label-safe TTA, and none did on '
                                      'Fashion-MNIST'])}
# The policy the demo trains with, one of POLICIES (switching it is this one line). In bench/label_payoff.py only
# bounded TrivialAugment *with label-safe TTA* beat no augmentation by two standard errors (digits, 10/class); the
# demo reports plain validation accuracy on the full training set, where no policy has been measured to help, so it
# trains without augmentation and the label check still reports what may change.
POLICY = 'none'

# The demo report, in page order: one line per section, each a function of the finished run.
DEMO_SECTIONS = [
    lambda run: metrics_section(run.metrics),
    lambda run: training_section(run.learn),
    lambda run: groups_section(run.learn),
    lambda run: schedule_section(run.learn),
    lambda run: augmentation_section(run.dls, run.tfms, n=8, descriptions=run.policy_texts),
    lambda run: invariance_section(run.inv, max_drop=MAX_DROP, trained_with=(run.policy, run.policy_texts),
                                   title='Label invariance (label check on the training images, before training)'),
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
    """The demo: (1) `label_invariance_check` on the training images (`LABEL_CHECK`) measures which augmentations keep
    labels, per class, beside a clean model's robustness; (2) `arch` is fine-tuned with `fine_tune_gradual` under the
    augmentation of `POLICIES[POLICY]`; (3) `out/index.html` reports training, schedule, augmentation, invariance
    (both axes, per class, collisions, the policy) and interpretation, and `out/metrics.json` the figures."""
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
    # The label check sees the training images only, at 32 px (it resizes them to LABEL_CHECK['size'] itself).
    check_dls = demo_dls(data, size=32, seed=seed, n_per_class=n_per_class)
    n_check = len(check_dls.train_ds)
    inv = label_invariance_check(check_dls.train, **LABEL_CHECK, bs=min(64, n_check // 2), seed=seed,
                                 progress=not quiet)
    timings['label_check_s'] = time.perf_counter() - t0
    tfms, policy_texts = POLICIES[POLICY](inv)
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
                   recipe=f'fine_tune_gradual({epochs})', policy=POLICY, policy_texts=policy_texts,
                   augmentation=[type(t).__name__ for t in tfms], suggested_transforms=suggestion_texts(inv, MAX_DROP),
                   label_safe_magnitudes=inv.safe_magnitudes(MAX_DROP, axis='label'),
                   label_safe_per_class=inv.safe_magnitudes(MAX_DROP, per_class=True).to_dict(orient='index'),
                   robustness_safe_magnitudes=inv.safe_magnitudes(MAX_DROP, axis='robustness'),
                   train_magnitudes=inv.train_magnitudes(MAX_DROP),
                   label_check=dict(n_items=inv.n, epochs=LABEL_CHECK['epochs'], size=LABEL_CHECK['size'],
                                    transforms=len(inv.tfms), magnitudes=len(inv.keys)),
                   torch_threads=torch.get_num_threads(), machine=platform.machine(), device=str(dls.device))
    t0 = time.perf_counter()
    run = SimpleNamespace(learn=learn, dls=dls, tfms=tfms, inv=inv, metrics=metrics, policy=POLICY,
                          policy_texts=policy_texts)
    sections = [make(run) for make in DEMO_SECTIONS]
    timings['report_s'] = time.perf_counter() - t0
    metrics.update({k: round(v, 1) for k, v in timings.items()})
    path = write_report(out, f'fastai_cnntricks demo: {arch} on {data}', sections, metrics)
    metrics['report'] = str(path)
    return metrics
