"""Each freezing schedule on its own, composed by hand as a fastai user would (`fit_one_cycle(n, lr, cbs=Schedule())`
at the schedule's defaults), at the LRs such a user picks, against fastai's `fine_tune(n, lr)` at the same LR and
`fine_tune_gradual(n)`; the same epochs for every arm, and paired seeds (a seed draws the same labelled images and the
same batch order for every arm).

    .venv/bin/python bench/schedules_alone.py                        # digits + fashion, 10/30 per class, 3 seeds
    .venv/bin/python bench/schedules_alone.py --datasets digits --budgets 10 --seeds 1 --out /tmp/x.md
    flock /tmp/bench.lock .venv/bin/python bench/schedules_alone.py ...   # beside other benchmarks

`--lrs` takes numbers and `auto` (`auto_base_lr(dls)`: the one argument the LR warning tells a user to change; only
the schedules run at it). `--arms` takes schedule names or calls with arguments, e.g. `"GradualUnfreeze(decay=1)"`.
Writes bench/results/schedules_alone.md (after every cell, so a stopped run keeps what it measured)."""
from __future__ import annotations
import argparse
import random
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
warnings.filterwarnings('ignore')
from transfer import make_dls, new_learner, ValidateOnceAtEnd  # noqa: E402
from machine import results_table  # noqa: E402
from fastai.vision.all import set_seed  # noqa: E402
from fastai_cnntricks.core import mean_se  # noqa: E402
from fastai_cnntricks.transfer import GradualUnfreeze, ChainThaw, LPFT, DiscriminativeLR, NormPolicy, auto_base_lr  # noqa: E402

SCHEDULES = ['GradualUnfreeze', 'ChainThaw', 'LPFT', 'DiscriminativeLR']


def run_arm(arm, lr, dls, epochs, seed, fit='one_cycle'):
    """Validation accuracy of one arm; the seed fixes the initial head and the batch order. `fit`: the fastai fit the
    schedules run under ('one_cycle' or 'flat_cos'); fastai's `fine_tune` and `fine_tune_gradual` keep their own."""
    set_seed(seed)
    dls.train.rng = random.Random(seed)
    learn = new_learner(dls)
    fit_fn = learn.fit_flat_cos if fit == 'flat_cos' else learn.fit_one_cycle
    if arm == 'fine_tune': learn.fine_tune(epochs - 1, lr, freeze_epochs=1)  # equal epochs: 1 frozen + (epochs-1)
    elif arm == 'fine_tune_gradual': learn.fine_tune_gradual(epochs)
    elif arm == 'DiscriminativeLR': learn.unfreeze(); fit_fn(epochs, lr, cbs=DiscriminativeLR())
    else:  # a schedule's name, or a call with arguments (an ablation of one default)
        ns = dict(GradualUnfreeze=GradualUnfreeze, ChainThaw=ChainThaw, LPFT=LPFT, NormPolicy=NormPolicy)
        fit_fn(epochs, lr, cbs=eval(arm if '(' in arm else arm + '()', ns))
    learn.remove_cbs(learn.cbs.filter(lambda c: isinstance(c, ValidateOnceAtEnd)))
    return float(learn.validate()[1])


def lr_value(lr, dls): return auto_base_lr(dls) if lr == 'auto' else float(lr)


def fmt(v):
    m, se = mean_se(v)
    return f'{m:.3f}' + ('' if np.isnan(se) else f' ± {se:.3f}')


def diff(a, b):
    "Paired difference in points, mean ± se."
    m, se = mean_se(100 * (np.array(a) - np.array(b)))
    return f'{m:+.1f}' + ('' if np.isnan(se) else f' ± {se:.1f}')


def rows_for(res, lrs, arms):
    rows = []
    for (ds, n), cell in res.items():
        rec = cell.get(('fine_tune_gradual', None), [])
        if rec: rows.append(f'| {ds} {n}/class: fine_tune_gradual | | | {fmt(rec)} | | |')
        for lr in lrs:
            ft = cell.get(('fine_tune', lr), [])
            if ft: rows.append(f'| {ds} {n}/class, lr {lr}: fastai fine_tune | | | {fmt(ft)} | | |')
            for a in arms:
                v = cell.get((a, lr), [])
                if not v: continue
                k = min(len(v), len(ft)) if ft else len(v)
                notes = f'vs fine_tune_gradual {diff(v[:k], rec[:k])} pts' if len(rec) >= k else ''
                ref = (f'fastai fine_tune | {fmt(ft[:k])} | {fmt(v[:k])} | {diff(v[:k], ft[:k])} pts' if ft else
                       f'(fine_tune not run at this lr) | | {fmt(v[:k])} | ')
                rows.append(f'| {ds} {n}/class, lr {lr}: {a} | {ref} | {notes} |')
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--datasets', nargs='*', default=['digits', 'fashion'])
    ap.add_argument('--budgets', nargs='*', type=int, default=[10, 30])
    ap.add_argument('--seeds', type=int, default=3)
    ap.add_argument('--epochs', type=int, default=4)
    ap.add_argument('--lrs', nargs='*', default=['3e-4', '1e-3', '3e-3'])
    ap.add_argument('--arms', nargs='*', default=SCHEDULES)
    ap.add_argument('--n-valid', type=int, default=500)
    ap.add_argument('--fit', choices=['one_cycle', 'flat_cos'], default='one_cycle', help='the fit the schedules run under')
    ap.add_argument('--label', default='', help='a note on the code state (e.g. "before: defaults of commit X")')
    ap.add_argument('--out', default=str(Path(__file__).parent / 'results' / 'schedules_alone.md'))
    a = ap.parse_args()
    torch.set_num_threads(2)
    t0, res = time.time(), {}
    cmd = '.venv/bin/python bench/schedules_alone.py ' + ' '.join(sys.argv[1:])
    note = (f"{a.label + '. ' if a.label else ''}tf_efficientnet_lite0 (embedded ImageNet weights), 64 px, bs 32, "
            f"{a.epochs} epochs for every arm, {a.seeds} paired seed(s), {a.n_valid} held-out validation images. "
            "`reference` is fastai `fine_tune(epochs-1, lr, freeze_epochs=1)` at the same LR, `ours` the schedule at its "
            f"defaults under `fit_{a.fit}(epochs, lr)` (DiscriminativeLR: after `learn.unfreeze()`); accuracies are "
            "mean ± se over seeds, `ratio` holds the paired difference ours - fine_tune in points (mean ± se), and "
            "`notes` the paired difference to `fine_tune_gradual(epochs)`. lr `auto` is `auto_base_lr(dls)`.")
    for ds in a.datasets:
        for n in a.budgets:
            cell = res.setdefault((ds, n), {})
            for seed in range(a.seeds):
                dls = make_dls(ds, n, 64, seed, a.n_valid, 'cpu')
                cell.setdefault(('fine_tune_gradual', None), []).append(run_arm('fine_tune_gradual', None, dls, a.epochs, seed))
                for lr in a.lrs:
                    for arm in (['fine_tune'] if lr != 'auto' else []) + a.arms:  # fine_tune keeps the user's LR
                        t = time.time()
                        acc = run_arm(arm, lr_value(lr, dls), dls, a.epochs, seed, fit=a.fit)
                        cell.setdefault((arm, lr), []).append(acc)
                        print(f'{ds} {n} seed {seed} lr {lr} {arm}: {acc:.4f} ({time.time() - t:.0f} s)', flush=True)
                print(f'{ds} {n} seed {seed} fine_tune_gradual: {cell["fine_tune_gradual", None][-1]:.4f}', flush=True)
                results_table('Freezing schedules on their own vs fastai fine_tune (bench/schedules_alone.py)', cmd, t0,
                              'cpu', note, rows_for(res, a.lrs, a.arms), a.out)
    print(Path(a.out).read_text())


if __name__ == '__main__':
    main()
