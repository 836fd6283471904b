"""Variants of `fine_tune_gradual` on one few-shot cell, paired by seed (a probe for better defaults).

    .venv/bin/python bench/transfer_variants.py fashion 30 base wdn_half [--epochs 6] [--seeds 3]

Variants: `base` (the defaults); names containing `wdn` fit the probe head with L2 = 1/n (sklearn's C = 1);
names containing `half` halve `auto_base_lr`. One torch thread, so it can run beside other work.
Prints per-seed accuracies and mean ± sd; writes nothing."""
import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
warnings.filterwarnings('ignore')
from transfer import make_dls, new_learner, ValidateOnceAtEnd  # noqa: E402
from fastai.vision.all import set_seed, Learner  # noqa: E402
from fastai_cnntricks.all import auto_base_lr  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('dataset', nargs='?', default='digits')
    ap.add_argument('per_class', nargs='?', type=int, default=30)
    ap.add_argument('variants', nargs='*', default=['base', 'wdn_half'])
    ap.add_argument('--epochs', type=int, default=6); ap.add_argument('--seeds', type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(1)
    res = {v: [] for v in a.variants}
    for seed in range(a.seeds):
        dls = make_dls(a.dataset, a.per_class, 64, seed, 1000, 'cpu')
        n = len(dls.train_ds)
        for v in a.variants:
            set_seed(seed)
            learn = new_learner(dls)
            if 'wdn' in v: learn.probe_init_head = lambda *_, _l=learn, **__: Learner.probe_init_head(_l, wd=1. / n)
            kw = dict(base_lr=auto_base_lr(dls) / 2) if 'half' in v else {}
            learn.fine_tune_gradual(a.epochs, **kw)
            learn.remove_cbs(learn.cbs.filter(lambda c: isinstance(c, ValidateOnceAtEnd)))
            res[v].append(float(learn.validate()[1]))
            print(seed, v, f'{res[v][-1]:.4f}', flush=True)
    for v in a.variants: print(f'{v}: {np.mean(res[v]):.4f} ± {np.std(res[v]):.4f}')


if __name__ == '__main__':
    main()
