"""Which recipe should `cnntricks demo` use? Candidate recipes on digits at 64 px, 4 epochs, the embedded
tf_efficientnet_lite0, measured side by side. Usage: .venv/bin/python bench/demo_recipe.py [--epochs 4] [--seeds 1]
[--recipes fine_tune_gradual] [--base-lrs 6e-4 1.2e-3] (fine_tune_gradual at fixed base LRs beside its default)"""
import argparse, datetime, platform, sys, time
from pathlib import Path

import numpy as np
import torch
from fastai.vision.all import set_seed, BnFreeze, ProgressCallback

from fastai_cnntricks.all import digits_dls, timm_learner
from machine import cpu_model  # noqa: E402


def fastai_fine_tune(learn, ep): learn.fine_tune(ep, 2e-3)                       # fastai's default recipe
def full_one_cycle(learn, ep): learn.unfreeze(); learn.fit_one_cycle(ep, 1e-3)   # everything trainable
def head_only(learn, ep):                                                         # linear probe, BN in eval mode
    learn.freeze(); learn.train_bn = False; learn.add_cb(BnFreeze()); learn.fit_one_cycle(ep, 1e-2)
def gradual(learn, ep, base_lr=None): learn.fine_tune_gradual(ep, base_lr=base_lr)  # this project's recipe

RECIPES = dict(fastai_fine_tune=fastai_fine_tune, full_one_cycle=full_one_cycle, head_only=head_only,
               fine_tune_gradual=gradual)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--epochs', type=int, default=4)
    ap.add_argument('--seeds', type=int, default=1)
    ap.add_argument('--size', type=int, default=64)
    ap.add_argument('--recipes', nargs='+', default=list(RECIPES), choices=list(RECIPES))
    ap.add_argument('--base-lrs', nargs='*', type=float, default=[], help="fine_tune_gradual also at these base LRs")
    ap.add_argument('--out', default=str(Path(__file__).parent/'results'/'demo_recipe.md'))
    a = ap.parse_args()
    rows, runs = [], [(n, RECIPES[n]) for n in a.recipes]
    runs += [(f'fine_tune_gradual (base_lr {lr:.2g})', lambda learn, ep, lr=lr: gradual(learn, ep, base_lr=lr))
             for lr in a.base_lrs]
    for name, recipe in runs:
        accs, lows, secs = [], [], []
        for seed in range(a.seeds):
            set_seed(seed, reproducible=True)
            learn = timm_learner(digits_dls(size=a.size, seed=42), 'tf_efficientnet_lite0')
            learn.remove_cbs(ProgressCallback); learn.logger = lambda *a, **k: None
            t = time.perf_counter(); recipe(learn, a.epochs); secs.append(time.perf_counter() - t)
            per_epoch = [float(v[2]) for v in learn.recorder.values]
            accs.append(per_epoch[-1]); lows.append(min(per_epoch[1:] or per_epoch))
            print(name, seed, per_epoch, secs[-1], flush=True)
        rows.append((name, np.mean(accs), np.std(accs), min(lows), np.mean(secs)))
    lines = [f'## Demo recipe: digits at {a.size} px, {a.epochs} epochs, embedded tf_efficientnet_lite0',
             '', f'Command: `.venv/bin/python bench/demo_recipe.py {" ".join(sys.argv[1:])}`  ',
             f'Machine: {cpu_model()}, {torch.get_num_threads()} torch threads, {platform.platform()}; '
             f'date {datetime.date.today()}', '', '| recipe | valid accuracy (mean ± sd) | lowest valid accuracy after epoch 1, any seed | fit time (s) |',
             '|---|---|---|---|']
    lines += [f'| {n} | {m:.3f} ± {s:.3f} | {low:.3f} | {t:.0f} |' for n, m, s, low, t in rows]
    Path(a.out).write_text('\n'.join(lines) + '\n')
    print('\n'.join(lines))


if __name__ == '__main__': main()
