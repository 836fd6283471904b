"""Benchmark: `label_invariance_check` over the default sweep on real data (all 1,797 digits; a Fashion-MNIST subset),
its cost, the label-safe against the robustness-safe magnitudes, the per-class table and the 6/9 collisions; and,
over `--seeds`, the swap signal (`rep.swaps`) of every transform and magnitude, to check `SWAP_MIN` off the seed it
was read on. Writes bench/results/label_invariance.md (then run bench/collect.py).

    flock /tmp/bench.lock .venv/bin/python bench/label_invariance.py [--threads 2] [--fashion-per-class 150] [--seeds 0 1]
"""
from __future__ import annotations
import argparse, sys, time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fastai_cnntricks.data import digits_dls, fashion_mnist_dls  # noqa: E402
from fastai_cnntricks.invariance import label_invariance_check, resolve_sweep, SWAP_MIN  # noqa: E402
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
            'label_swaps', 'acc', 'affinity']
    return [f'## {name}: label-safe vs robustness-safe magnitudes (2-point tolerance)', '',
            'label_*: references trained with the transform (nested ranges), out of fold; safe_magnitude, worst_drop, '
            'top_transitions: robustness of a clean reference of the same kind.', '', md(rep.summary(0.02)), '',
            f'### {name}: label-safe magnitude per class (`safe_magnitudes(0.02, per_class=True)`)', '',
            md(rep.safe_magnitudes(0.02, per_class=True), index=True), '',
            f'### {name}: rotation by 180°, per class', '', md(r180), '',
            f'Colliding pairs at 180° (`transitions("rotate", 180)`):', '', md(rep.transitions('rotate', 180)), '',
            f'Colliding pairs of vflip (`transitions("vflip", 1)`):', '', md(rep.transitions('vflip', 1)), '',
            f'Swapped pairs of vflip (`swaps("vflip", 1)`):', '', md(rep.swaps('vflip', 1)), '',
            f'<details><summary>{name}: full table</summary>', '', md(rep.table[cols]), '', '</details>', '']


def swap_section(name, reps, seeds):
    "Per (transform, magnitude), each seed's most swapped pair and its share (min of both ways), and the verdict."
    import pandas as pd
    rows = []
    for ft, ms in reps[0].sweep:
        for m in ms[1:]:
            r = dict(tfm=ft.name, magnitude=m)
            top = [rep.swaps(ft.name, m, min_share=0).head(1) for rep in reps]
            for seed, t in zip(seeds, top):
                share = min(t.a_to_b.iloc[0], t.b_to_a.iloc[0]) if len(t) else 0.
                r[f'seed {seed}'] = f'{t.a.iloc[0]} ↔ {t.b.iloc[0]} {share:.2f}' if len(t) else '0'
                r[f'_{seed}'] = share
            rows.append(r)
    df = pd.DataFrame(rows)
    shares = df[[c for c in df.columns if c.startswith('_')]]
    df['swap'] = ['yes' if v else '' for v in (shares >= SWAP_MIN).any(axis=1)]
    below = shares.where(shares < SWAP_MIN).max().max()
    return [f'### {name}: swaps (most swapped pair per magnitude: min(share of a read as b, of b read as a), clean '
            f'reference; SWAP_MIN = {SWAP_MIN})', '',
            f'Largest share below SWAP_MIN over all seeds: {below:.2f}; magnitudes with a swap in any seed: '
            f'{", ".join(f"{r.tfm} {r.magnitude:g}" for r in df.itertuples() if r.swap) or "none"}.', '',
            f'<details><summary>{name}: every magnitude</summary>', '',
            md(df[[c for c in df.columns if not c.startswith('_')]]), '', '</details>', '']


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--fashion-per-class', type=int, default=150, help='training images per class (+ 500 test images)')
    ap.add_argument('--seeds', type=int, nargs='*', default=[0, 1], help='seeds of the swap table (the first: the tables)')
    ap.add_argument('--out', default=str(OUT))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0, rows, extra = time.time(), [], []
    cmd = (f'flock /tmp/bench.lock .venv/bin/python bench/label_invariance.py --threads {args.threads} '
           f'--seeds {" ".join(map(str, args.seeds))}')
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
        reps = [label_invariance_check(dls, progress=False, seed=seed) for seed in args.seeds]
        rep = reps[0]
        sec = (time.time() - s) / len(reps)
        rows.append(f'| {name}: default sweep ({len(rep.tfms)} transforms, {n_keys} magnitudes), {rep.n} images | '
                    f'target 180 s (digits) | | {sec:.0f} s | {sec / 180:.2f}x target | {args.threads} threads |')
        extra += sections(name, rep) + swap_section(name, reps, args.seeds)
        text = results_table('Label-invariance check: label preservation per class, and its cost', cmd, t0,
                             'cpu', note, rows, args.out)
        Path(args.out).write_text(text + '\n' + '\n'.join(extra))
        print(f'{name}: {sec:.0f} s per check', flush=True)


if __name__ == '__main__':
    main()
