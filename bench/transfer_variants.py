"""Variants of `fine_tune_gradual` on one few-shot cell, paired by seed (a probe for better defaults).

    .venv/bin/python bench/transfer_variants.py fashion 30 base lr0.5 [--epochs 6] [--seeds 3] [--alphas 1 0.5]

Variants: `base` (the defaults), or `_`-joined changes to them: `wdn` fits the probe head with L2 = 1/n (sklearn's
C = 1; the default since it was measured here); `lrX` multiplies `auto_base_lr` by X; `headX` multiplies the head's
LR (only) by X. Each fine-tuned model is also evaluated with its weights interpolated towards its start (the
pretrained body with the probe head): `alpha` 1 is the fine-tuned model, 0 the probe (WiSE-FT, Wortsman et al. 2022). Variants of one seed see the same data in the same order (the shuffle RNG is reset), so
their differences are paired. One torch thread, so it can run beside other work. Prints per-seed accuracies, means
and paired differences; redirect that to bench/results/variants_<dataset>_<per_class>.txt (with the command on the
first line) and `bench/collect.py` adds it to RESULTS.md."""
import argparse
import random
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
warnings.filterwarnings('ignore')
from transfer import make_dls, new_learner, ValidateOnceAtEnd  # noqa: E402
from fastai.vision.all import set_seed  # noqa: E402
from fastai_cnntricks.all import auto_base_lr  # noqa: E402
from fastai_cnntricks.transfer.lrs import LRScaler  # noqa: E402


class HeadLR(LRScaler):
    "Scales the head group's LR by `k` on top of the schedule."
    def __init__(self, k): self.k = k
    def group_factors(self): return [1.] * (len(self.opt.hypers) - 1) + [self.k]


def options(variant):
    "(probe kwargs, fine_tune_gradual kwargs) for a variant name."
    probe, fit = {}, {}
    for t in variant.split('_'):
        if t == 'wdn': probe['wd'] = None  # filled in with 1/n
        elif t.startswith('lr'): fit['lr_mult'] = float(t[2:])
        elif t.startswith('head'): fit['cbs'] = [HeadLR(float(t[4:]))]
        elif t != 'base': raise SystemExit(f'unknown variant token {t!r}')
    return probe, fit


def interpolated_accuracy(learn, start, alpha):
    "Validation accuracy with every floating-point weight at `start + alpha * (fine-tuned - start)`."
    tuned = {k: v.clone() for k, v in learn.model.state_dict().items()}
    mixed = {k: start[k] + alpha * (v - start[k]) if v.is_floating_point() else v for k, v in tuned.items()}
    learn.model.load_state_dict(mixed)
    acc = float(learn.validate()[1])
    learn.model.load_state_dict(tuned)
    return acc


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('dataset', nargs='?', default='digits')
    ap.add_argument('per_class', nargs='?', type=int, default=30)
    ap.add_argument('variants', nargs='*', default=['base', 'lr0.5'])
    ap.add_argument('--epochs', type=int, default=6); ap.add_argument('--seeds', type=int, default=3)
    ap.add_argument('--alphas', type=float, nargs='*', default=[1., 0.75, 0.5, 0.])
    a = ap.parse_args()
    torch.set_num_threads(1)
    res = {(v, al): [] for v in a.variants for al in a.alphas}
    for seed in range(a.seeds):
        dls = make_dls(a.dataset, a.per_class, 64, seed, 1000, 'cpu')
        n = len(dls.train_ds)
        for v in a.variants:
            set_seed(seed)
            dls.train.rng = random.Random(seed)  # the same batches for every variant of this seed
            learn = new_learner(dls)
            probe, fit = options(v)
            learn.probe_init_head(**({'wd': 1. / n} if 'wd' in probe else {}))
            start = {k: t.clone() for k, t in learn.model.state_dict().items()}
            learn.fine_tune_gradual(a.epochs, init_head=False, base_lr=auto_base_lr(dls) * fit.get('lr_mult', 1.),
                                    cbs=fit.get('cbs'))
            learn.remove_cbs(learn.cbs.filter(lambda c: isinstance(c, ValidateOnceAtEnd)))
            for al in a.alphas:
                res[v, al].append(interpolated_accuracy(learn, start, al))
            print(seed, v, ' '.join(f'alpha {al}: {res[v, al][-1]:.4f}' for al in a.alphas), flush=True)
    for (v, al), r in res.items(): print(f'{v} alpha {al}: {np.mean(r):.4f} ± {np.std(r):.4f}')
    base = a.variants[0]
    for (v, al), r in res.items():
        d = np.array(r) - np.array(res[base, 1.])
        print(f'{v} alpha {al} - {base} alpha 1: {d.mean():+.4f} ± {d.std() / np.sqrt(len(d)):.4f} (mean ± s.e.)')


if __name__ == '__main__':
    main()
