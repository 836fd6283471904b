"""Benchmark: the label-invariance sweep on real data (scikit-learn digits, Fashion-MNIST) and its cost.

For each dataset: train a resnet10t from scratch without flips or rotations, run `learn.invariance_check()` over the
default sweep (T transforms x M magnitudes), and time, in the same run, the anchors it is compared with:
  * T*M plain batched validation passes: the model over the same N items, batches already loaded (strictest);
  * T*M fastai `learn.get_preds(dl=...)` passes (what a user would loop over by hand; loads the data each time).
Writes bench/results/invariance.md plus PNG plots (affinity/flip rate, flip examples) under bench/results/.

    .venv/bin/python bench/invariance.py [--quick] [--device cuda] [--datasets digits fashion-mnist]
"""
from __future__ import annotations
import argparse
import datetime
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fastai.vision.all import set_seed  # noqa: E402
from fastai_cnntricks.data import digits_dls, fashion_mnist_dls  # noqa: E402
from fastai_cnntricks.transfer import timm_learner  # noqa: E402
from fastai_cnntricks.invariance import DEFAULT_SWEEP, QUICK_SWEEP, resolve_sweep  # noqa: E402
from machine import cpu_model  # noqa: E402

OUT = Path(__file__).resolve().parent / 'results'


def train(name, quick, device):
    set_seed(0, reproducible=True)
    if name == 'digits': dls, epochs = digits_dls(size=24, bs=64, device=device), 5
    else: dls, epochs = fashion_mnist_dls(size=28, n_per_class=100 if quick else 500, n_valid=500 if quick else 1000,
                                          bs=128, device=device), 3 if quick else 5
    learn = timm_learner(dls, 'resnet10t', pretrained=False)
    learn.model.to(device)
    t0 = time.perf_counter()
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(epochs, 5e-3)
    return learn, time.perf_counter() - t0, float(learn.validate()[1])


def md_table(df):
    "A DataFrame as a markdown table (numbers to 3 significant digits)."
    cell = lambda v: f'{v:.3g}' if isinstance(v, float) else str(v)
    rows = [' | '.join(map(str, df.columns)), ' | '.join('---' for _ in df.columns)]
    rows += [' | '.join(cell(v) for v in r) for r in df.itertuples(index=False)]
    return '\n'.join(f'| {r} |' for r in rows)


def sync(device):
    if torch.device(device).type == 'cuda': torch.cuda.synchronize()


def plain_passes(learn, k, device):
    "k plain batched validation passes over pre-loaded batches (eval, no grad)."
    batches = [(xb.to(device), yb) for xb, yb in learn.dls.valid]
    learn.model.eval()
    sync(device); t0 = time.perf_counter()
    with torch.no_grad():
        for _ in range(k):
            for xb, _ in batches: learn.model(xb).argmax(1)
    sync(device)
    return time.perf_counter() - t0


def get_preds_passes(learn, k):
    "k fastai `get_preds` passes over the validation DataLoader (the data loaded each time)."
    t0 = time.perf_counter()
    with learn.no_bar():
        for _ in range(k): learn.get_preds(dl=learn.dls.valid)
    return time.perf_counter() - t0


def run(name, quick, device, lines):
    learn, fit_s, acc = train(name, quick, device)
    tfms, mags = (list(QUICK_SWEEP), QUICK_SWEEP) if quick else (list(DEFAULT_SWEEP), None)
    k = sum(sum(ft.severity(m) > 0 for m in ms) for ft, ms in resolve_sweep(tfms, mags))
    learn.invariance_check(tfms[:1], {tfms[0]: [0, 5]}, progress=False)  # warm-up (allocator, lazy inits)
    sync(device); t0 = time.perf_counter()
    rep = learn.invariance_check(tfms, mags, progress=False)
    sync(device); sweep_s = time.perf_counter() - t0
    plain_s = plain_passes(learn, k, device)
    gp_s = get_preds_passes(learn, k)
    tag = name.replace('-', '_')
    rep.plot().savefig(OUT / f'invariance_{tag}.png', dpi=80, bbox_inches='tight')
    w_name, w_m = rep.worst()
    rep.show_flips('rotate', 180 if 180 in rep.table[rep.table.tfm == 'rotate'].magnitude.values else w_m).savefig(
        OUT / f'invariance_{tag}_flips.png', dpi=80, bbox_inches='tight')
    lines += [f'## {name}', '',
              f'resnet10t from scratch, {len(learn.dls.train_ds)} training / {rep.n} validation items, '
              f'fit {fit_s:.0f} s, clean accuracy {acc:.4f}.', '',
              '### Cost', '', '| what | seconds | ratio to plain passes |', '|---|---:|---:|',
              f'| invariance sweep ({k} (transform, magnitude) pairs + clean pass, {rep.n} items) | {sweep_s:.1f} | '
              f'{sweep_s / plain_s:.2f}x |',
              f'| {k} plain batched validation passes (model only, batches pre-loaded) | {plain_s:.1f} | 1.00x |',
              f'| {k} fastai `learn.get_preds(dl=valid)` passes | {gp_s:.1f} | {gp_s / plain_s:.2f}x |', '',
              f'Sweep / plain passes: **{sweep_s / plain_s:.2f}x** (target <= 1.2x); sweep / get_preds loop: '
              f'**{sweep_s / gp_s:.2f}x**.', '',
              '### Safe magnitudes (2-point tolerance) and transitions at the largest magnitude', '',
              md_table(rep.summary(0.02)), '',
              f'Interpolated safe rotation: {rep.safe_magnitudes(0.02, interpolate=True).get("rotate", float("nan")):.1f}°. '
              f'Suggested transforms: {", ".join(type(t).__name__ for t in rep.suggest_tfms(0.02)) or "none"}.', '',
              f'![affinity and flip rate](invariance_{tag}.png) ![flips](invariance_{tag}_flips.png)', '',
              '<details><summary>Full table</summary>', '', md_table(rep.table.drop(columns=['n_items'])), '',
              '</details>', '']
    print(f'{name}: sweep {sweep_s:.1f}s, plain {plain_s:.1f}s ({sweep_s / plain_s:.2f}x), get_preds {gp_s:.1f}s', flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--quick', action='store_true', help='small sweep, smaller Fashion-MNIST subset')
    ap.add_argument('--device', default='cpu', help="'cpu' or 'cuda'")
    ap.add_argument('--datasets', nargs='+', default=['digits', 'fashion-mnist'])
    ap.add_argument('--shared', action='store_true', help='note that the machine was shared with other work')
    ap.add_argument('--out', default=str(OUT / 'invariance.md'))
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    lines = ['# Label-invariance check: sweep results and cost', '',
             f'{datetime.date.today()} · {platform.platform()} · {cpu_model()} · torch {torch.__version__} · '
             f'{torch.get_num_threads()} threads · device {args.device}' + (' · quick' if args.quick else ''), '',
             'Command: `.venv/bin/python bench/invariance.py' + (' --quick' if args.quick else '') +
             (f' --device {args.device}' if args.device != 'cpu' else '') + '`', '']
    if args.shared:
        lines += ['Note: the 2-core machine was shared with other work during this run (load average well above 2); '
                  'absolute seconds are inflated, ratios measured in the same run are comparable.', '']
    for name in args.datasets: run(name, args.quick, args.device, lines)
    Path(args.out).write_text('\n'.join(lines))
    print('\n'.join(lines))


if __name__ == '__main__':
    main()
