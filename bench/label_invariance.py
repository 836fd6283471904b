"""Benchmark: `label_invariance_check` over the default sweep on real data (all 1,797 digits; a Fashion-MNIST subset),
its cost, the label-safe against the robustness-safe magnitudes, the per-class table and the 6/9 collisions.
Writes bench/results/label_invariance.md (then run bench/collect.py).

    flock /tmp/bench.lock .venv/bin/python bench/label_invariance.py [--threads 2] [--fashion-per-class 150]
"""
from __future__ import annotations
import argparse, sys, time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fastai_cnntricks.data import digits_dls, fashion_mnist_dls  # noqa: E402
from fastai_cnntricks.invariance import label_invariance_check, resolve_sweep  # noqa: E402
from machine import results_table  # noqa: E402

OUT = Path(__file__).resolve().parent / 'results' / 'label_invariance.md'


def md(df, index=False):
    "A DataFrame as a markdown table (floats to 3 significant digits)."
    df = df.reset_index() if index else df
    cell = lambda v: f'{v:.3g}' if isinstance(v, float) else str(v)  # noqa: E731
    rows = [' | '.join(map(str, df.columns)), ' | '.join('---' for _ in df.columns)]
    rows += [' | '.join(cell(v) for v in r) for r in df.itertuples(index=False)]
    return '\n'.join(f'| {r} |' for r in rows)


def sections(name, rep):
    ct = rep.class_table()
    r180 = ct[(ct.tfm == 'rotate') & (ct.magnitude == 180)][['cls', 'n', 'base_acc', 'label_acc', 'label_drop',
                                                                 'label_drop_se']]
    cols = ['tfm', 'magnitude', 'label_acc', 'label_drop', 'label_drop_se', 'label_ref_clean_acc', 'label_collisions',
            'acc', 'affinity']
    return [f'## {name}: label-safe vs robustness-safe magnitudes (2-point tolerance)', '',
            'label_*: references trained with the transform (nested ranges), out of fold; safe_magnitude, worst_drop, '
            'top_transitions: robustness of a clean reference of the same kind.', '', md(rep.summary(0.02)), '',
            f'### {name}: label-safe magnitude per class (`safe_magnitudes(0.02, per_class=True)`)', '',
            md(rep.safe_magnitudes(0.02, per_class=True), index=True), '',
            f'### {name}: rotation by 180°, per class', '', md(r180), '',
            f'Colliding pairs at 180° (`transitions("rotate", 180)`):', '', md(rep.transitions('rotate', 180)), '',
            f'Colliding pairs of vflip (`transitions("vflip", 1)`):', '', md(rep.transitions('vflip', 1)), '',
            f'<details><summary>{name}: full table</summary>', '', md(rep.table[cols]), '', '</details>', '']


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--fashion-per-class', type=int, default=150, help='training images per class (+ 500 test images)')
    ap.add_argument('--out', default=str(OUT))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0, rows, extra = time.time(), [], []
    cmd = f'flock /tmp/bench.lock .venv/bin/python bench/label_invariance.py --threads {args.threads}'
    note = ('`label_invariance_check(dls)` at its defaults (16 px, LabelNet width 32, 12 epochs, 2 folds, a clean '
            'reference for the robustness axis), default sweep. Cost: one reference per transform and fold plus the '
            'clean one, so it grows linearly with the number of transforms (+1) and of images; magnitudes add only '
            'evaluation passes (heads share the body).')
    datasets = [('digits', lambda: digits_dls(size=32, bs=128)),
                ('Fashion-MNIST', lambda: fashion_mnist_dls(size=28, n_per_class=args.fashion_per_class, n_valid=500,
                                                            bs=128))]
    n_keys = sum(sum(ft.severity(m) > 0 for m in ms) for ft, ms in resolve_sweep())
    for name, make in datasets:
        dls = make()
        s = time.time()
        rep = label_invariance_check(dls, progress=False)
        sec = time.time() - s
        rows.append(f'| {name}: default sweep ({len(rep.tfms)} transforms, {n_keys} magnitudes), {rep.n} images | '
                    f'target 180 s (digits) | | {sec:.0f} s | {sec / 180:.2f}x target | {args.threads} threads |')
        extra += sections(name, rep)
        text = results_table('Label-invariance check: label preservation per class, and its cost', cmd, t0,
                             'cpu', note, rows, args.out)
        Path(args.out).write_text(text + '\n' + '\n'.join(extra))
        print(f'{name}: {sec:.0f} s', flush=True)


if __name__ == '__main__':
    main()
