"""Which recipe should `cnntricks demo` use? Candidate recipes on digits at 64 px, 4 epochs, the embedded
tf_efficientnet_lite0, measured side by side. Usage: .venv/bin/python bench/demo_recipe.py [--epochs 4] [--seeds 1]"""
import argparse, datetime, platform, time
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
def gradual(learn, ep): learn.fine_tune_gradual(ep)                              # this project's recipe

RECIPES = dict(fastai_fine_tune=fastai_fine_tune, full_one_cycle=full_one_cycle, head_only=head_only,
               fine_tune_gradual=gradual)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--epochs', type=int, default=4)
    ap.add_argument('--seeds', type=int, default=1)
    ap.add_argument('--size', type=int, default=64)
    ap.add_argument('--out', default=str(Path(__file__).parent/'results'/'demo_recipe.md'))
    a = ap.parse_args()
    rows = []
    for name, recipe in RECIPES.items():
        accs, secs = [], []
        for seed in range(a.seeds):
            set_seed(seed, reproducible=True)
            learn = timm_learner(digits_dls(size=a.size, seed=42), 'tf_efficientnet_lite0')
            if not hasattr(learn, 'fine_tune_gradual') and name == 'fine_tune_gradual': break
            learn.remove_cbs(ProgressCallback); learn.logger = lambda *a, **k: None
            t = time.perf_counter(); recipe(learn, a.epochs); secs.append(time.perf_counter() - t)
            accs.append(float(learn.recorder.values[-1][2]))
            print(name, seed, accs[-1], secs[-1], flush=True)
        if accs: rows.append((name, np.mean(accs), np.std(accs), np.mean(secs)))
    lines = [f'## Demo recipe: digits at {a.size} px, {a.epochs} epochs, embedded tf_efficientnet_lite0',
             '', f'Command: `.venv/bin/python bench/demo_recipe.py --epochs {a.epochs} --seeds {a.seeds}`  ',
             f'Machine: {cpu_model()}, {torch.get_num_threads()} torch threads, {platform.platform()}; '
             f'date {datetime.date.today()}', '', '| recipe | valid accuracy (mean ± sd) | fit time (s) |', '|---|---|---|']
    lines += [f'| {n} | {m:.3f} ± {s:.3f} | {t:.0f} |' for n, m, s, t in rows]
    Path(a.out).write_text('\n'.join(lines) + '\n')
    print('\n'.join(lines))


if __name__ == '__main__': main()
