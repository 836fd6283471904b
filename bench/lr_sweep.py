"""`fine_tune_gradual` by base LR, per cell: the table behind `AUTO_LR_ANCHORS`, read from the run cache of
bench/transfer.py (its `--lr-scales` runs are stored by the base LR they trained at, so no run is repeated here).

    .venv/bin/python bench/transfer.py --skip forgetting overhead --cache bench/results/transfer_runs.json \
        --methods 'logistic regression (frozen features)' fine_tune_gradual --lr-scales 0.3 2 5 --budgets 100 --archs lite0
    .venv/bin/python bench/lr_sweep.py     # writes bench/results/transfer_lr_sweep.md
"""
from __future__ import annotations
import json
import re
import sys
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fastai_cnntricks.transfer.lrs import auto_base_lr, AUTO_LR_ANCHORS  # noqa: E402

HERE = Path(__file__).parent
CACHE, OUT = HERE / 'results' / 'transfer_runs.json', HERE / 'results' / 'transfer_lr_sweep.md'
PROBE = 'logistic regression (frozen features)'


def se(a): return float(np.std(a, ddof=1) / np.sqrt(len(a))) if len(a) > 1 else float('nan')


def main():
    runs = json.loads(CACHE.read_text())
    by_lr, probe, dates = defaultdict(dict), defaultdict(dict), []
    for key, v in runs.items():
        arch, size, ep, nv, ds, n, method, seed = key.split('|')
        cell = (arch.replace('tf_efficientnet_', ''), int(size), ds, int(n))
        m = re.match(r'fine_tune_gradual \(base_lr (.+)\)$', method)
        if m: by_lr[cell].setdefault(float(m.group(1)), {})[int(seed)] = v['acc']; dates.append(v['date'])
        elif method == PROBE: probe[cell][int(seed)] = v['acc']
    lines = ['# `auto_base_lr`: `fine_tune_gradual` by base LR (the head\'s peak LR; groups below get 0.7x per group)', '',
             f'Command: `.venv/bin/python bench/lr_sweep.py` (renders the runs of `bench/transfer.py --lr-scales ...` kept '
             f'in `{CACHE.relative_to(HERE.parent)}`, measured {min(dates)} to {max(dates)} on this repo\'s 2-core AMD EPYC '
             'VM, torch 2.14.1 CPU, 2 threads, 6 epochs, bs 32, 1,000 held-out validation images).  ',
             f'Rule now: `AUTO_LR_ANCHORS = {AUTO_LR_ANCHORS}` (images per class, LR), log-log between. Accuracy mean ± se '
             'over the paired seeds (the same training images per seed for every LR); "vs rule": paired difference to the '
             'LR the rule gives now, in points; "vs probe": to the logistic regression on the same frozen features.', '',
             '| arch | size | dataset | per class | base LR | seeds | accuracy | vs rule (points) | vs probe (points) |',
             '|---|---|---|---|---|---|---|---|---|']
    for cell in sorted(by_lr):
        lrs = by_lr[cell]
        if len(lrs) < 2: continue
        rule = float(f'{auto_base_lr(SimpleNamespace(train_ds=range(10 * cell[3]), c=10)):.2g}')
        for lr in sorted(lrs):
            seeds = sorted(lrs[lr]); a = np.array([lrs[lr][s] for s in seeds])
            def diff(ref):
                common = [s for s in seeds if s in ref]
                if not common or ref is lrs[lr]: return ''
                d = 100 * np.array([lrs[lr][s] - ref[s] for s in common])
                return f'{d.mean():+.1f} ± {se(d):.1f}' + ('' if len(common) == len(seeds) else f' ({len(common)} seeds)')
            tag = f'**{lr:.2g}** (rule)' if lr == rule else f'{lr:.2g}'
            lines.append(f'| {cell[0]} | {cell[1]} px | {cell[2]} | {cell[3]} | {tag} | {len(seeds)} | '
                         f'{100 * a.mean():.1f} ± {100 * se(a):.1f} | {diff(lrs.get(rule, {}))} | {diff(probe[cell])} |')
    OUT.write_text('\n'.join(lines) + '\n')
    print('\n'.join(lines))


if __name__ == '__main__':
    main()
