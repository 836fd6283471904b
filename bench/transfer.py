"""Transfer-learning schedules on real few-shot data, against fastai's own `fine_tune` and a logistic regression on
frozen features; a forgetting experiment; and the callbacks' overhead.

    .venv/bin/python bench/transfer.py            # full: digits + Fashion-MNIST, 64 px, 10/30/100 per class, 3 seeds, 6 epochs (~1 h)
    .venv/bin/python bench/transfer.py --quick    # 1 seed, 10 and 100 per class, 32 px, fewer epochs
    .venv/bin/python bench/transfer.py --device cuda
    .venv/bin/python bench/transfer.py --archs lite0 lite1 lite2 --size 128 --skip forgetting overhead \
        --methods 'logistic regression (frozen features)' 'fastai fine_tune' fine_tune_gradual --lr-scales 0.3 3
Writes bench/results/transfer.md (`--out` elsewhere). `--cache FILE.json` keeps every (arch, size, cell, method, seed)
measured so far and reuses it, so a grid can be run in parts and collected by the full command."""
from __future__ import annotations
import argparse
import datetime
import json
import shlex
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
warnings.filterwarnings('ignore')

from fastai.vision.all import set_seed, accuracy, Callback, CancelValidException  # noqa: E402
from fastai_cnntricks.all import *  # noqa: E402,F403
from fastai_cnntricks.transfer.head_init import train_features  # noqa: E402
from machine import machine  # noqa: E402

ARCH = 'tf_efficientnet_lite0'  # the default backbone; --archs adds Lite1/Lite2 (embedded weights too)
LR_SWEEP = 'fine_tune_gradual (auto_base_lr x {:g})'


def arch_name(a):
    "'lite1' -> 'tf_efficientnet_lite1'; a full timm name passes through."
    return f'tf_efficientnet_{a}' if a.startswith('lite') else a


def make_dls(dataset, n, size, seed, n_valid, device):
    if dataset == 'digits':
        x, y = digits_arrays()
        # Every seed draws its training images from one fixed pool of 100 per class and validates on the images
        # outside it (the same for every budget and seed). Drawing from all images, as this did before 2026-12-02,
        # put training images of seeds > 0 into validation (about 44% of each draw).
        pool = few_shot_idxs(y, 100, 0) if n <= 100 else np.arange(len(y))
        tr = pool[few_shot_idxs(y[pool], n, seed)] if n <= 100 else few_shot_idxs(y, n, seed)
        rest = np.setdiff1d(np.arange(len(y)), pool if n <= 100 else tr)
        va = np.random.default_rng(123).permutation(rest)[:n_valid]  # fixed across budgets and seeds
        idx = np.concatenate([tr, va])
        return array_dls(x[idx], y[idx], size, valid_idxs=list(range(len(tr), len(idx))), bs=32, seed=seed, device=device,
                         num_workers=0)
    return fashion_mnist_dls(size, n_per_class=n, n_valid=n_valid, bs=32, seed=seed, device=device, num_workers=0)


class ValidateOnceAtEnd(Callback):
    """Skip fastai's per-epoch validation during the fit (it would cost more than few-shot training itself);
    `run_method` removes it before the one final `validate()`."""
    def before_validate(self): raise CancelValidException()


def new_learner(dls, pretrained='embedded', arch=ARCH):
    learn = timm_learner(dls, arch, pretrained=pretrained, cbs=ValidateOnceAtEnd())
    learn.model.to(memory_format=torch.channels_last)  # same results, ~1.3x faster training on this CPU
    learn.remove_cbs([learn.progress])
    learn.recorder.logger = lambda *a: None
    return learn


def logreg_probe(learn):
    "The anchor: scikit-learn logistic regression on the frozen body's features (BatchNorm in eval mode)."
    from sklearn.linear_model import LogisticRegression
    xtr, ytr = train_features(learn)
    xva, yva = train_features(learn, learn.dls.valid)
    clf = LogisticRegression(max_iter=2000, C=1.0).fit(xtr.numpy(), ytr.numpy())
    return float((clf.predict(xva.numpy()) == yva.numpy()).mean())


def lr_scale(name):
    "The factor k of a 'fine_tune_gradual (auto_base_lr x k)' method, else None."
    pre, post = LR_SWEEP.split('{:g}')
    return float(name[len(pre):-len(post)]) if name.startswith(pre) and name.endswith(post) else None


def run_method(name, dls, epochs, arch=ARCH):
    "Train one way; return validation accuracy."
    if name == 'from scratch':
        learn = new_learner(dls, pretrained=False, arch=arch)
        learn.fit_one_cycle(epochs, 3e-3)
    else:
        learn = new_learner(dls, arch=arch)
        n = len(learn.opt.param_lists) if learn.opt else len(learn.splitter(learn.model))
        if name == 'logistic regression (frozen features)': return logreg_probe(learn)
        if name == 'linear probe (head only, BN eval)':
            learn.fit_one_cycle(epochs, 1e-2, cbs=NormPolicy(affine=False))
        elif name == 'fastai fine_tune':
            learn.fine_tune(epochs - 1, 3e-3, freeze_epochs=1)  # equal epochs: 1 frozen + (epochs-1)
        elif name == 'discriminative LR (0.7)':
            learn.unfreeze(); learn.fit_one_cycle(epochs, 3e-3, cbs=DiscriminativeLR(0.7))
        elif name == 'GradualUnfreeze':
            learn.fit_one_cycle(epochs, 3e-3, cbs=[GradualUnfreeze(every=epochs / n), DiscriminativeLR(0.7)])
        elif name == 'ChainThaw':
            learn.fit_one_cycle(epochs, 3e-3, cbs=ChainThaw())
        elif name == 'LPFT':
            learn.fit_one_cycle(epochs, 3e-3, cbs=[LPFT(), DiscriminativeLR(0.7)])
        elif name == 'fine_tune_gradual':
            learn.fine_tune_gradual(epochs)
        elif name == 'fine_tune_gradual + L2SP':
            learn.fine_tune_gradual(epochs, l2sp=0.01)
        elif lr_scale(name) is not None:
            learn.fine_tune_gradual(epochs, base_lr=lr_scale(name) * auto_base_lr(learn.dls))
        else: raise ValueError(name)
    learn.remove_cbs(learn.cbs.filter(lambda c: isinstance(c, ValidateOnceAtEnd)))
    return float(learn.validate()[1])


METHODS = ['from scratch', 'logistic regression (frozen features)', 'linear probe (head only, BN eval)',
           'fastai fine_tune', 'discriminative LR (0.7)', 'GradualUnfreeze', 'ChainThaw', 'LPFT',
           'fine_tune_gradual', 'fine_tune_gradual + L2SP']


def accuracy_table(args, log):
    "Every (arch, dataset, budget, method) cell over `args.seeds` paired seeds; cells in `args.cache` are reused."
    cache = json.loads(Path(args.cache).read_text()) if args.cache and Path(args.cache).exists() else {}
    rows = {}
    for arch in args.archs:
        for ds in args.datasets:
            for n in args.budgets:
                for m in METHODS:
                    accs, secs = [], []
                    for seed in range(args.seeds):
                        key = f'{arch}|{args.size}|{args.epochs}|{args.n_valid}|{ds}|{n}|{cache_method(m, ds, n)}|{seed}'
                        if key not in cache:
                            dls = make_dls(ds, n, args.size, seed, args.n_valid, args.device)
                            set_seed(seed)
                            t = time.time()
                            acc = run_method(m, dls, args.epochs, arch=arch)
                            cache[key] = dict(acc=acc, secs=time.time() - t, machine=machine(),
                                              date=f'{datetime.datetime.now():%Y-%m-%d %H:%M}')
                            if args.cache: Path(args.cache).write_text(json.dumps(cache, indent=1))
                        accs.append(cache[key]['acc']); secs.append(cache[key]['secs'])
                        args.run_dates.append(cache[key]['date'])
                    rows[(arch, ds, n, m)] = (np.mean(accs), se(accs), np.mean(secs), accs)
                    log(f"{arch} {args.size}px {ds} {n}/class {m}: {np.mean(accs):.3f} ± {se(accs):.3f} se "
                        f"({np.mean(secs):.0f} s)")
    return rows


def se(xs):
    "Standard error of the mean (nan for one value)."
    xs = np.asarray(xs, dtype=float)
    return xs.std(ddof=1) / np.sqrt(len(xs)) if len(xs) > 1 else float('nan')


def accuracy_lines(args, rows):
    "The markdown tables of `accuracy_table`'s rows: accuracy, fine_tune_gradual vs the anchors, paired differences."
    short = lambda a: a.replace('tf_efficientnet_', '')
    px = f'{args.size} px'
    lines = ['', f'## Accuracy (embedded ImageNet weights; mean ± se over {args.seeds} paired seed(s); wall time per '
             'run, mean over seeds)', '', '| arch | size | dataset | per class | method | accuracy | time (s) |',
             '|---|---|---|---|---|---|---|']
    for (arch, ds, n, m), (mu, s, t, _) in rows.items():
        lines.append(f'| {short(arch)} | {px} | {ds} | {n} | {m} | {mu:.3f} ± {s:.3f} | {t:.0f} |')
    anchors = ('fine_tune_gradual', 'fastai fine_tune', 'logistic regression (frozen features)')
    cells = [(a, ds, n) for a in args.archs for ds in args.datasets for n in args.budgets]
    if all(m in METHODS for m in anchors):
        lines += ['', '### fine_tune_gradual vs. the anchors', '', '| arch | size | dataset | per class | '
                  'fine_tune_gradual | fastai fine_tune | logistic regression | beats both |',
                  '|---|---|---|---|---|---|---|---|']
        for c in cells:
            g, f, l = (rows[c + (m,)][0] for m in anchors)
            lines.append(f'| {short(c[0])} | {px} | {c[1]} | {c[2]} | {g:.3f} | {f:.3f} | {l:.3f} | '
                         f'{"yes" if g > f and g > l else "**no**"} |')
    if 'fine_tune_gradual' in METHODS:
        lines += ['', '### Paired differences (a seed draws the same labelled images for every method)', '',
                  '| arch | size | dataset | per class | fine_tune_gradual minus | mean ± se (points) | '
                  'seeds it wins / ties / loses |', '|---|---|---|---|---|---|---|']
        for c in cells:
            g = np.array(rows[c + ('fine_tune_gradual',)][3])
            for m in ('logistic regression (frozen features)', 'fastai fine_tune'):
                if m not in METHODS: continue
                d = 100 * (g - np.array(rows[c + (m,)][3]))
                lines.append(f'| {short(c[0])} | {px} | {c[1]} | {c[2]} | {m} | {d.mean():+.2f} ± {se(d):.2f} | '
                             f'{(d > 0).sum()} / {(d == 0).sum()} / {(d < 0).sum()} |')
    scales = sorted({lr_scale(m) for m in METHODS if lr_scale(m) is not None} | {1.0})
    if len(scales) > 1 and 'fine_tune_gradual' in METHODS:
        name = lambda k: 'fine_tune_gradual' if k == 1 else LR_SWEEP.format(k)
        lines += ['', '### fine_tune_gradual at auto_base_lr times k (mean ± se; paired difference to k = 1 in points)',
                  '', '| arch | size | dataset | per class | auto_base_lr | ' + ' | '.join(f'k = {k:g}' for k in scales)
                  + ' | best k |', '|---|---|---|---|---|' + '---|' * len(scales) + '---|']
        for c in cells:
            ref = np.array(rows[c + ('fine_tune_gradual',)][3])
            cols = []
            for k in scales:
                a = np.array(rows[c + (name(k),)][3])
                d = 100 * (a - ref)
                cols.append(f'{a.mean():.3f} ± {se(a):.3f}' + ('' if k == 1 else f' ({d.mean():+.1f} ± {se(d):.1f})'))
            best = max(scales, key=lambda k: rows[c + (name(k),)][0])
            lr = auto_base_lr_for(c[1], c[2])
            lines.append(f'| {short(c[0])} | {px} | {c[1]} | {c[2]} | {lr:.2g} | ' + ' | '.join(cols) + f' | {best:g} |')
    return lines


def cache_method(m, ds, n):
    """A method's name in the cache: fine_tune_gradual and its LR sweep by the base LR they train at, so a run stays
    attached to its LR when the `auto_base_lr` rule changes (and a sweep point equal to the default is one run)."""
    k = 1.0 if m == 'fine_tune_gradual' else lr_scale(m)
    return m if k is None else f'fine_tune_gradual (base_lr {k * auto_base_lr_for(ds, n):.2g})'


def auto_base_lr_for(ds, n):
    "auto_base_lr of a (dataset, per-class) cell, from its class count alone (what the rule reads)."
    from types import SimpleNamespace
    return auto_base_lr(SimpleNamespace(train_ds=range(10 * n), c=10))


def forgetting(args, log):
    "Pretrain resnet10t on digits 0-4, transfer to 5-9 with few labels; retained 0-4 accuracy via the old head."
    x, y = digits_arrays()
    src = np.flatnonzero(y < 5)
    rng = np.random.default_rng(0)
    src_va = rng.permutation(src)[:200]
    src_tr = np.setdiff1d(src, src_va)
    dls_src = array_dls(x[np.concatenate([src_tr, src_va])], y[np.concatenate([src_tr, src_va])], 32,
                        valid_idxs=list(range(len(src_tr), len(src))), bs=32, device=args.device, num_workers=0)
    set_seed(0)
    base = timm_learner(dls_src, 'resnet10t', pretrained=False)
    base.remove_cb(base.progress)
    base.fit_one_cycle(args.src_epochs, 3e-3)
    src_acc0 = float(base.validate()[1])
    state = {k: v.clone() for k, v in base.model.state_dict().items()}
    old_head = base.model.get_classifier()
    tgt = np.flatnonzero(y >= 5)
    tr = np.concatenate([rng.permutation(tgt[y[tgt] == c])[:10] for c in range(5, 10)])
    va = np.setdiff1d(tgt, tr)
    idx = np.concatenate([tr, va])
    out = {}
    for name in ['plain fine-tuning', 'L2SP (alpha 0.1)', 'GradualUnfreeze']:
        dls_t = array_dls(x[idx], y[idx], 32, valid_idxs=list(range(len(tr), len(idx))), bs=16, device=args.device, num_workers=0)
        learn = timm_learner(dls_t, 'resnet10t', pretrained=False)
        learn.remove_cb(learn.progress)
        sd = {k: v for k, v in state.items() if not k.startswith('fc.')}
        learn.model.load_state_dict(sd, strict=False)
        import copy
        head = copy.deepcopy(old_head)
        src_dl = dls_src.valid
        mon = DriftMonitor(source_dl=src_dl, source_head=head, per_group=False)
        set_seed(0)
        if name == 'plain fine-tuning':
            learn.unfreeze(); learn.fit_one_cycle(args.epochs, 3e-3, cbs=mon)
        elif name.startswith('L2SP'):
            learn.unfreeze(); learn.fit_one_cycle(args.epochs, 3e-3, wd=0., cbs=[mon, L2SP(alpha=0.1, beta=0.)])
        else:
            learn.fit_one_cycle(args.epochs, 3e-3, cbs=[mon, GradualUnfreeze(every=args.epochs / 7),
                                                        DiscriminativeLR(0.7)])
        last = mon.history[-1]
        out[name] = (float(learn.validate()[1]), last['source_acc'], last['feat_cka'], last['drift'])
        log(f"forgetting {name}: new {out[name][0]:.3f} retained {out[name][1]:.3f}")
    return src_acc0, out


def overhead(args, log):
    "Epoch time of a plain fit vs. the same fit with the schedule callbacks (everything trainable in both)."
    dls = make_dls('digits', 100, args.size, 0, 100, args.device)
    learn = new_learner(dls, arch=args.archs[0])
    learn.unfreeze()
    times = {'plain': [], 'callbacks': []}
    n = len(learn.opt.param_lists) if learn.opt else 9
    for rep in range(args.overhead_reps):
        for k in ('plain', 'callbacks'):
            cbs = [] if k == 'plain' else [GradualUnfreeze(schedule={0: 'all'}, norm=NormPolicy(stats='update')),
                                           DiscriminativeLR(1.0)]
            t = time.time()
            learn.fit(1, 1e-4, cbs=cbs)
            times[k].append(time.time() - t)
    p, c = np.median(times['plain']), np.median(times['callbacks'])
    log(f"overhead: plain {p:.2f}s callbacks {c:.2f}s")
    return p, c


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--quick', action='store_true')
    ap.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    ap.add_argument('--out', default=str(Path(__file__).parent / 'results' / 'transfer.md'))
    ap.add_argument('--shared', action='store_true', help='note that the machine was shared during the run')
    ap.add_argument('--skip', nargs='*', default=[], help='parts to skip: accuracy forgetting overhead')
    ap.add_argument('--datasets', nargs='*', default=None, help='digits and/or fashion (default: both)')
    ap.add_argument('--budgets', nargs='*', type=int, default=None, help='labelled images per class')
    ap.add_argument('--methods', nargs='*', default=None, help='subset of the methods, by exact name')
    ap.add_argument('--epochs', type=int, default=None, help='epochs per method (default: 6, quick 4)')
    ap.add_argument('--seeds', type=int, default=None, help='seeds per cell (default: 3, quick 1)')
    ap.add_argument('--archs', nargs='*', default=[ARCH], help=f'backbones: lite0 lite1 lite2 or timm names (default: {ARCH})')
    ap.add_argument('--size', type=int, default=None, help='image side in px (default: 64, quick 32)')
    ap.add_argument('--lr-scales', nargs='*', type=float, default=[],
                    help='also run fine_tune_gradual at auto_base_lr times each factor (1 is fine_tune_gradual itself)')
    ap.add_argument('--cache', default=None, help='JSON file of measured runs: reused when present, extended as runs finish')
    cli = ap.parse_args()
    args = argparse.Namespace(**vars(cli))  # a copy: the presets below must not overwrite --datasets/--budgets
    if args.quick:
        args.datasets, args.budgets, args.seeds, args.size, args.epochs = ['digits', 'fashion'], [10, 100], 1, 32, 5
        args.n_valid, args.src_epochs, args.overhead_reps, args.epochs = 300, 4, 3, 4
    else:
        args.datasets, args.budgets, args.seeds, args.size, args.epochs = ['digits', 'fashion'], [10, 30, 100], 3, 64, 6
        args.n_valid, args.src_epochs, args.overhead_reps = 1000, 10, 5
    if cli.epochs: args.epochs = cli.epochs
    if cli.seeds: args.seeds = cli.seeds
    if cli.datasets: args.datasets = cli.datasets
    if cli.budgets: args.budgets = cli.budgets
    if cli.size: args.size = cli.size
    args.archs = [arch_name(a) for a in cli.archs]
    torch.set_num_threads(2)
    if cli.methods:
        unknown = [m for m in cli.methods if m not in METHODS]
        if unknown: ap.error(f"unknown method(s) {unknown}; valid: {METHODS}")
        METHODS[:] = [m for m in METHODS if m in cli.methods]
    METHODS.extend(LR_SWEEP.format(k) for k in cli.lr_scales if k != 1)
    lines = []
    def log(s): print(s, flush=True)
    t0 = time.time()
    lines += [f"# Transfer-learning schedules ({'quick' if args.quick else 'full'} run"
              f"{', ' + str(args.epochs) + ' epochs' if cli.epochs else ''}{', subset of methods' if cli.methods else ''}; "
              f"{', '.join(a.replace('tf_efficientnet_', '') for a in args.archs)} at {args.size} px)", '',
              f"Command: `.venv/bin/python bench/transfer.py {shlex.join(sys.argv[1:])}`  ",
              f"Date: {datetime.datetime.now():%Y-%m-%d %H:%M}  ", f"Machine: {machine()}  ",
              f"Device: {args.device}; {args.size} px; {args.epochs} epochs; bs 32; {args.seeds} seed(s); "
              f"validation: {args.n_valid} held-out images (digits: a fixed subset, Fashion-MNIST: the first test images)."]
    if args.shared: lines.append('\n**The 2-core machine was shared with other work during this run: times are noisy.**')
    if 'accuracy' not in args.skip:
        args.run_dates = []
        rows = accuracy_table(args, log)
        if args.cache:
            lines.append(f'Runs collected from `{args.cache}` (measured in parts on this machine, each under the benchmark '
                         f'lock): {min(args.run_dates)} to {max(args.run_dates)}.')
        lines += accuracy_lines(args, rows)
    if 'forgetting' not in args.skip:
        src0, out = forgetting(args, log)
        lines += ['', '## Forgetting (resnet10t from scratch on digits 0-4, then 10 labels per class of 5-9, 32 px)', '',
                  f'Source accuracy before transfer: {src0:.3f}', '',
                  '| method | new task (5-9) | retained 0-4 (old head) | feature CKA vs start | mean weight drift |',
                  '|---|---|---|---|---|']
        for k, (new, ret, cka, dr) in out.items(): lines.append(f'| {k} | {new:.3f} | {ret:.3f} | {cka:.3f} | {dr:.3f} |')
    if 'overhead' not in args.skip:
        p, c = overhead(args, log)
        lines += ['', '## Callback overhead (one epoch of digits, 100/class, everything trainable, median of '
                  f'{args.overhead_reps})', '', '| plain fit (s) | with GradualUnfreeze + DiscriminativeLR + ScheduleLog (s) | ratio |',
                  '|---|---|---|', f'| {p:.2f} | {c:.2f} | {c / p:.3f} |']
    lines += ['', f'Total wall time: {time.time() - t0:.0f} s']
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text('\n'.join(lines) + '\n')
    print('\n'.join(lines))


if __name__ == '__main__':
    main()
