"""The payoff of label-safe augmentation: few-shot accuracy of `fine_tune_gradual` under each augmentation policy,
paired seeds (the same training images per seed for every arm), embedded tf_efficientnet_lite0 at 64 px.

Arms: no augmentation; fastai `aug_transforms()`; the unbounded `trivial_augment()`; the former suggestion (the
robustness check `quick_invariance_check` of a clean resnet10t reference, as the demo once did); the label suggestion
at the label-safe magnitudes themselves (`suggest_tfms(max_drop, min_retained=0)`); `bounded_trivial_augment(safe)`;
class-conditional augmentation on top of the better of those two; the same two within `train_magnitudes(max_drop)`,
the "(soft)" arms (the clean model's robustness as a soft preference, as `suggest_tfms(max_drop)` returns it); and
label-safe TTA (`learn.label_safe_tta`) on the fitted models of the label-safe arms and of no augmentation (TTA
alone), evaluation only, no refit ("(soft)" arms: TTA within `train_magnitudes` too). The label check runs once per
dataset on a labelled pool disjoint from the validation set; its cost is reported. `--recipes` compares variants of
the recipe (the exploration).

    flock /tmp/bench.lock .venv/bin/python bench/label_payoff.py                 # the full run
    flock /tmp/bench.lock .venv/bin/python bench/label_payoff.py --quick         # 1 seed, 10/class, 3 arms
    flock /tmp/bench.lock .venv/bin/python bench/label_payoff.py --explore       # recipe variants, 2 seeds, 10 and 30/class
Writes bench/results/label_payoff.md (the exploration: bench/results/label_payoff_explore.md)."""
from __future__ import annotations
import argparse, datetime, json, sys, time, warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
warnings.filterwarnings('ignore')

from fastai.vision.all import set_seed, aug_transforms, Callback, CancelValidException, accuracy  # noqa: E402
from fastai_cnntricks.all import *  # noqa: E402,F403
from fastai_cnntricks.data import digits_arrays, fashion_mnist_arrays, few_shot_idxs, array_dls, FASHION_CLASSES  # noqa: E402
from fastai_cnntricks.invariance import label_invariance_check, quick_invariance_check  # noqa: E402
from fastai_cnntricks.reference import reference_learner  # noqa: E402
from fastai_cnntricks.invariance.catalogue import suggested_tfms, fixed_catalogue  # noqa: E402
from fastai_cnntricks.augment import fuse_tfms, bounded_trivial_augment, trivial_augment, class_conditional_tfms  # noqa: E402
from machine import machine  # noqa: E402

ARCH, SIZE, MAX_DROP = 'tf_efficientnet_lite0', 64, 0.02
OUT = Path(__file__).resolve().parent / 'results'
FIT_ARMS = ['none', 'aug_transforms', 'trivial', 'old suggest', 'label suggest', 'bounded trivial', 'class-conditional',
            'label suggest (soft)', 'bounded trivial (soft)', 'bounded trivial (soft+)']
# (soft): within `train_magnitudes(max_drop)` (the clean model's robustness as a soft preference, min_retained=0.5),
# as `suggest_tfms(max_drop)` returns it; the plain arms train up to the label-safe magnitudes themselves. (soft+):
# (soft) less every transform the clean model keeps under half of at its train magnitude, flips included.
TTA_ARMS = ['none', 'label suggest', 'bounded trivial', 'class-conditional', 'label suggest (soft)',
            'bounded trivial (soft)', 'bounded trivial (soft+)']  # 'none': TTA alone, on the unaugmented fit
TTA_POLICIES = {'suggest': ' + TTA', 'trivial': ' + TTA trivial'}  # label_safe_tta(policy=...): the arm's name suffix
ARMS = FIT_ARMS + [f'{a}{sfx}' for sfx in TTA_POLICIES.values() for a in TTA_ARMS]
NO_AUG_SAME = ('probe_copies', 'aug_from', 'max_drop')  # recipe options that leave an unaugmented fit as it is: 'none' runs once
# recipe variants (the exploration): fine_tune_gradual kwargs, and the epoch count
RECIPES = {'base': dict(), 'probe4': dict(probe_copies=4), 'late50': dict(aug_from=0.5), 'ep12': dict(epochs=12),
           'probe4+ep12': dict(probe_copies=4, epochs=12), 'probe8': dict(probe_copies=8),
           'probe4+late50': dict(probe_copies=4, aug_from=0.5), 'probe16': dict(probe_copies=16),
           'strict': dict(max_drop=0.005), 'strict+probe8': dict(max_drop=0.005, probe_copies=8),
           'mid': dict(max_drop=0.01), 'mid+probe8': dict(max_drop=0.01, probe_copies=8),
           'probe8+ep12': dict(probe_copies=8, epochs=12)}  # max_drop: the label-safe tolerance of the safe set


# ---- data ---------------------------------------------------------------------------------------------------------
def split(ds, n_valid, pool_per_class):
    """(pool images, pool labels, validation images, validation labels, class names): the few-shot training images of
    every seed and the label check's images come from the pool, which never overlaps the fixed validation set."""
    if ds == 'digits':
        x, y = digits_arrays()
        perm = np.random.default_rng(123).permutation(len(y))
        va, pool = np.sort(perm[:n_valid]), np.sort(perm[n_valid:])
        return x[pool], y[pool], x[va], y[va], None
    xtr, ytr = fashion_mnist_arrays('train')
    xte, yte = fashion_mnist_arrays('test')
    return xtr, ytr, xte[:n_valid], yte[:n_valid], list(FASHION_CLASSES)


def cell_dls(data, n, seed, tfms=None, size=SIZE, bs=32):
    "The few-shot cell: `n` pool images per class drawn with `seed` (the same for every arm), the fixed validation set."
    px, py, vx, vy, names = data
    tr = few_shot_idxs(py, n, seed)
    x, y = np.concatenate([px[tr], vx]), np.concatenate([py[tr], vy])
    return array_dls(x, y, size, valid_idxs=list(range(len(tr), len(y))), bs=bs, seed=seed, names=names,
                     batch_tfms=tfms, num_workers=0)


def label_pool_dls(data, ds, pool_per_class):
    "The label check's items: the whole digits pool; 200 (pool_per_class) pool images per class of Fashion-MNIST."
    px, py, _, _, names = data
    idx = np.arange(len(py)) if ds == 'digits' else few_shot_idxs(py, pool_per_class, 10_000)
    return array_dls(px[idx], py[idx], 32, valid_pct=0.25, bs=128, seed=0, names=names, num_workers=0)


# ---- learners -------------------------------------------------------------------------------------------------------
class ValidateOnceAtEnd(Callback):
    "Skip fastai's per-epoch validation during the fit; removed before the final evaluation."
    def before_validate(self): raise CancelValidException()


def new_learner(dls):
    learn = timm_learner(dls, ARCH, pretrained='embedded', cbs=ValidateOnceAtEnd())
    learn.model.to(memory_format=torch.channels_last)
    learn.remove_cbs([learn.progress])
    learn.recorder.logger = lambda *a: None
    return learn


def old_suggestion(data, n, seed):
    "Today's suggestion, as the demo builds it: a resnet10t from scratch (3 epochs, 32 px) on the cell's images, its robustness check."
    dls32 = cell_dls(data, n, seed, size=32, bs=min(64, 10 * n // 2))
    set_seed(seed)
    ref = reference_learner(dls32, 'resnet10t', pretrained=False, epochs=3)
    inv = quick_invariance_check(ref, progress=False)
    return inv.safe_magnitudes(MAX_DROP), inv.suggest_tfms(max_drop=MAX_DROP)


def class_table_on_top(table, safe):
    """The per-class table where a class may go beyond the global safe limit; elsewhere the neutral value (the global
    policy already covers it)."""
    from fastai_cnntricks.invariance.catalogue import fixed_catalogue
    cat = fixed_catalogue()
    out = table.copy().astype(float)
    keep = []
    for col in out.columns:
        neutral, g = cat[col].neutral, safe.get(col, cat[col].neutral)
        sev = lambda m: cat[col].severity(m)  # noqa: E731
        out[col] = [v if sev(v) > sev(g) + 1e-9 else neutral for v in table[col]]
        if (out[col] != neutral).any(): keep.append(col)
    return out[keep]


def soft_plus(train, retained, min_retained=0.5):
    "`train` less the transforms the clean model keeps under `min_retained` of at their train magnitude (flips too)."
    cat = fixed_catalogue()
    return {k: v if v == cat[k].neutral or retained[k][f'{v:g}'] >= min_retained else cat[k].neutral
            for k, v in train.items()}


def arm_tfms(arm, ctx):
    "The batch transforms of a fitted arm."
    if arm == 'none': return []
    if arm == 'aug_transforms': return aug_transforms()
    if arm == 'trivial': return trivial_augment()
    if arm == 'old suggest': return fuse_tfms(ctx['old'][1]) if ctx['old'][1] else []
    if arm == 'label suggest': return fuse_tfms(ctx['suggest'])
    if arm == 'bounded trivial': return bounded_trivial_augment(ctx['safe'])
    if arm == 'label suggest (soft)': return fuse_tfms(suggested_tfms(ctx['train'], fixed_catalogue()))
    if arm == 'bounded trivial (soft)': return bounded_trivial_augment(ctx['train'])
    if arm == 'bounded trivial (soft+)': return bounded_trivial_augment(ctx['train+'])
    if arm == 'class-conditional':
        base = arm_tfms(ctx['cc_base'], ctx)
        extra = class_table_on_top(ctx['table'], ctx['safe'])
        return base + (class_conditional_tfms(extra, ctx['vocab'], p=ctx['cc_p']) if len(extra.columns) else [])
    raise ValueError(arm)


def fit_eval(data, n, seed, tfms, recipe, tta_safe=None, tta_n=4, tta_policies=('suggest',)):
    "Fit one arm; (accuracy, {tta policy: accuracy}, seconds)."
    set_seed(seed)
    dls = cell_dls(data, n, seed, tfms)
    learn = new_learner(dls)
    kw = {k: v for k, v in recipe.items() if k != 'max_drop'}
    epochs = kw.pop('epochs', 6)
    set_seed(seed)
    t = time.time()
    learn.fine_tune_gradual(epochs, **kw)
    sec = time.time() - t
    learn.remove_cbs(learn.cbs.filter(lambda c: isinstance(c, ValidateOnceAtEnd)))
    acc = float(learn.validate()[1])
    tta = {}
    if tta_safe is not None:
        for pol in tta_policies:
            set_seed(seed)
            preds, targs = learn.label_safe_tta(safe=tta_safe, n=tta_n, beta=0.25, policy=pol)
            tta[pol] = float(accuracy(preds, targs))
    return acc, tta, sec


# ---- the run ------------------------------------------------------------------------------------------------------
def mean_se(v):
    v = np.asarray(v, float)
    return v.mean(), (v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else float('nan'))


def fmt(v, d=None):
    m, s = mean_se(v)
    if d: return f'{m * 100:+.1f} ± {s * 100:.1f}' if np.isfinite(s) else f'{m * 100:+.1f}'
    return f'{m * 100:.1f} ± {s * 100:.1f}' if np.isfinite(s) else f'{m * 100:.1f}'


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--datasets', nargs='*', default=['digits', 'fashion'])
    ap.add_argument('--budgets', nargs='*', type=int, default=[10, 30, 100])
    ap.add_argument('--seeds', type=int, default=5)
    ap.add_argument('--seeds-100', type=int, default=3, help='seeds of the 100/class cells')
    ap.add_argument('--arms', nargs='*', default=ARMS, help=f'subset of {ARMS}')
    ap.add_argument('--recipes', nargs='*', default=['base'], help=f'fine_tune_gradual variants: {list(RECIPES)}')
    ap.add_argument('--aug-recipe', default=None, help='recipe variant for the augmented arms only (none keeps base)')
    ap.add_argument('--cc-base', default='auto', help="class-conditional on top of: 'label suggest', 'bounded trivial' "
                    "or 'auto' (the better of the two in the cell, by mean over seeds -- fitted first)")
    ap.add_argument('--cc-p', type=float, default=0.5)
    ap.add_argument('--n-valid', type=int, default=500, help='validation images (digits: 500 of 1797; Fashion: test[:n])')
    ap.add_argument('--pool-per-class', type=int, default=200, help='Fashion-MNIST images per class for the label check')
    ap.add_argument('--tta-n', type=int, default=4)
    ap.add_argument('--tta-policies', nargs='*', default=['suggest'], help='label_safe_tta policies: suggest, trivial')
    ap.add_argument('--tta-recipes', nargs='*', default=None, help='recipes whose fits also get TTA (default: all)')
    ap.add_argument('--max-drop', type=float, default=MAX_DROP, help='label-safe tolerance of the safe magnitudes (0.02: 2 points)')
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--quick', action='store_true', help='1 seed, 10/class, digits, arms none/label suggest/bounded trivial')
    ap.add_argument('--explore', action='store_true', help='the exploration: 2 seeds, 10 and 30/class')
    ap.add_argument('--cache', default='/tmp/label_payoff_check.json', help='label check answers, reused when present')
    ap.add_argument('--out', default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick: args.seeds, args.budgets, args.datasets, args.arms = 1, [10], ['digits'], ['none', 'label suggest', 'bounded trivial']
    if args.explore and '--budgets' not in sys.argv: args.seeds, args.budgets = 2, [10, 30]
    out = Path(args.out) if args.out else OUT / ('label_payoff_explore.md' if args.explore else 'label_payoff.md')
    for a in args.arms:
        if a not in ARMS: raise SystemExit(f'unknown arm {a!r}; choose from {ARMS}')
    for r in args.recipes + ([args.aug_recipe] if args.aug_recipe else []):
        if r not in RECIPES: raise SystemExit(f'unknown recipe {r!r}; choose from {list(RECIPES)}')
    cmd = 'flock /tmp/bench.lock .venv/bin/python bench/label_payoff.py ' + ' '.join(
        f"'{a}'" if ' ' in a else a for a in sys.argv[1:])
    t0, date = time.time(), datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')
    cache = json.loads(Path(args.cache).read_text()) if Path(args.cache).exists() else {}
    res, checks, olds, cc_bases = {}, {}, {}, {}
    log = lambda s: print(f'[{time.time() - t0:6.0f} s] {s}', flush=True)  # noqa: E731
    prep = {}
    for ds in args.datasets:
        data = split(ds, args.n_valid, args.pool_per_class)
        key = f'{ds}:{args.pool_per_class}:{len(data[1])}'
        if key not in cache or 'train0.005' not in cache[key]:  # train{d}: train_magnitudes(d), added later
            pdl = label_pool_dls(data, ds, args.pool_per_class)
            s = time.time()
            rep = label_invariance_check(pdl, progress=False)
            cache[key] = dict(sec=time.time() - s, n=rep.n,
                              **{f'safe{d:g}': rep.safe_magnitudes(d) for d in (0.005, 0.01, 0.02)},
                              **{f'train{d:g}': rep.train_magnitudes(d) for d in (0.005, 0.01, 0.02)},
                              retained={ft.name: {f'{m:g}': rep.retained(ft.name, m) for m in ms} for ft, ms in rep.sweep},
                              **{f'table{d:g}': rep.safe_magnitudes(d, per_class=True).to_json() for d in (0.005, 0.01, 0.02)})
            Path(args.cache).write_text(json.dumps(cache))
        import pandas as pd, io
        c = dict(cache[key])
        c['safe'], c['train'], c['max_drop'] = c[f'safe{args.max_drop:g}'], c[f'train{args.max_drop:g}'], args.max_drop
        c['train+'] = soft_plus(c['train'], c['retained'])
        vocab = data[4] if data[4] is not None else [str(i) for i in range(10)]
        tables = {}
        for d in (0.005, 0.01, 0.02):
            t = pd.read_json(io.StringIO(c[f'table{d:g}']))
            t.index = [str(i) for i in t.index]
            tables[d] = t.loc[vocab]
        checks[ds] = c
        log(f"{ds}: label check on {c['n']} pool images in {c['sec']:.0f} s; safe {c['safe']}; train {c['train']}")
        prep[ds] = (data, c, tables, vocab)
    max_seeds = max(args.seeds if n < 100 else min(args.seeds, args.seeds_100) for n in args.budgets)
    for seed in range(max_seeds):  # seeds outermost: a run stopped early keeps every cell at fewer seeds
        for ds in args.datasets:
            data, c, tables, vocab = prep[ds]
            for n in args.budgets:
                if seed >= (args.seeds if n < 100 else min(args.seeds, args.seeds_100)): continue
                for recipe_name in args.recipes:
                    md = RECIPES[recipe_name].get('max_drop', args.max_drop)
                    train = c[f'train{md:g}']
                    ctx = dict(safe=c[f'safe{md:g}'], train=train, **{'train+': soft_plus(train, c['retained'])},
                               table=tables[md], vocab=vocab, cc_p=args.cc_p,
                               suggest=suggested_tfms(c[f'safe{md:g}'], fixed_catalogue()))
                    if 'old suggest' in args.arms:
                        ctx['old'] = old_suggestion(data, n, seed)
                        olds[(ds, n, seed)] = ctx['old'][0]
                    tta_here = args.tta_recipes is None or recipe_name in args.tta_recipes
                    wants_tta = lambda a: [p for p in args.tta_policies if tta_here and f'{a}{TTA_POLICIES[p]}' in args.arms]  # noqa: E731
                    for arm in [a for a in FIT_ARMS if a in args.arms or any(f'{a}{x}' in args.arms for x in TTA_POLICIES.values())]:
                        if arm == 'none' and recipe_name != args.recipes[0] and 'base' in args.recipes \
                                and all(k in NO_AUG_SAME for k in RECIPES[recipe_name]):
                            continue  # the same fit as under the base recipe (no augmentation to copy or delay)
                        if arm == 'class-conditional':
                            base = args.cc_base
                            if base == 'auto':
                                m = {b: np.mean([res[(ds, n, recipe_name, b, s)] for s in range(seed)]) if seed else 0.
                                     for b in ('label suggest', 'bounded trivial') if (ds, n, recipe_name, b, 0) in res}
                                # the better of the two over the seeds fitted so far (seed 0: over seed 0 itself)
                                if seed == 0: m = {b: res[(ds, n, recipe_name, b, 0)] for b in m}
                                base = max(m, key=m.get) if m else 'bounded trivial'
                            ctx['cc_base'] = base
                            cc_bases.setdefault((ds, n, recipe_name), []).append(base)
                        recipe = dict(RECIPES[recipe_name])
                        if args.aug_recipe and arm != 'none': recipe = dict(RECIPES[args.aug_recipe])
                        tfms = arm_tfms(arm, ctx)
                        limits = ctx['train+' if arm.endswith('(soft+)') else 'train' if arm.endswith('(soft)') else 'safe']
                        acc, tta, sec = fit_eval(data, n, seed, tfms, recipe, tta_safe=limits if wants_tta(arm) else None,
                                                 tta_n=args.tta_n, tta_policies=wants_tta(arm))
                        res[(ds, n, recipe_name, arm, seed)] = acc
                        res[(ds, n, recipe_name, 'sec:' + arm, seed)] = sec
                        for pol, v in tta.items(): res[(ds, n, recipe_name, f'{arm}{TTA_POLICIES[pol]}', seed)] = v
                        log(f"{ds} {n}/class {recipe_name} seed {seed} {arm}: {acc:.3f}"
                            + ''.join(f" TTA {p} {v:.3f}" for p, v in tta.items()) + f' ({sec:.0f} s)')
                    write(out, args, cmd, date, t0, res, checks, olds, cc_bases)
    write(out, args, cmd, date, t0, res, checks, olds, cc_bases)
    log(f'wrote {out}')


def write(out, args, cmd, date, t0, res, checks, olds, cc_bases):
    keys = sorted({k[:3] for k in res}, key=lambda k: (args.datasets.index(k[0]), k[1], args.recipes.index(k[2])))
    lines = ['# The payoff of label-safe augmentation: few-shot `fine_tune_gradual`, paired seeds', '',
             f'Command: `{cmd}`  ', f'Date: {date}  ', f'Machine: {machine()}  ',
             f'Run time: {time.time() - t0:.0f} s  ',
             f'Setting: embedded {ARCH} at {SIZE} px, `fine_tune_gradual` (6 epochs unless the recipe says), bs 32, '
             f'validation {args.n_valid} digits held out of 1,797 / the first {args.n_valid} Fashion-MNIST '
             f'test images; seed s draws the same n images per class from the pool for every arm. Accuracy mean ± se '
             f'over seeds (points); "vs none": the paired difference, mean ± se.', '']
    for ds, c in checks.items():
        lines.append(f"- label check ({ds}): `label_invariance_check` on {c['n']} pool images (disjoint from "
                     f"validation), {c['sec']:.0f} s; safe magnitudes (`safe_magnitudes({c['max_drop']:g})`): "
                     + ', '.join(f'{k} {v:g}' for k, v in c['safe'].items())
                     + '; (soft) arms within `train_magnitudes`: ' + ', '.join(f'{k} {v:g}' for k, v in c['train'].items())
                     + '; (soft+): ' + ', '.join(f'{k} {v:g}' for k, v in c['train+'].items()))
    lines.append('')
    for ds, n, rname in keys:
        arms = [a for a in ARMS if (ds, n, rname, a, 0) in res]
        none_r = rname if (ds, n, rname, 'none', 0) in res else 'base'
        seeds = sorted({k[4] for k in res if k[:3] == (ds, n, rname) and k[3] == arms[0]})
        if none_r != rname and (ds, n, 'base', 'none', 0) in res: arms = ['none'] + arms
        get = lambda a, s: res.get((ds, n, none_r if a == 'none' else rname, a, s))  # noqa: E731
        base = [get('none', s) for s in seeds] if 'none' in arms else None
        aug_r = f' (augmented arms: {args.aug_recipe}, {RECIPES[args.aug_recipe]})' if getattr(args, 'aug_recipe', None) else ''
        lines += [f'## {ds}, {n} per class, recipe {rname}{aug_r} ({len(seeds)} seeds)', '',
                  '| arm | accuracy (%) | vs none (points) | wins vs none | fit s |', '|---|---|---|---|---|']
        for a in arms:
            v = [get(a, s) for s in seeds if get(a, s) is not None]
            d = fmt(np.array(v) - np.array(base[:len(v)]), True) if base is not None and a != 'none' else ''
            w = f"{sum(x > b for x, b in zip(v, base))}/{len(v)}" if base is not None and a != 'none' else ''
            sec = [res.get((ds, n, none_r if a == 'none' else rname, 'sec:' + a, s)) for s in seeds]
            sec = f'{np.mean([x for x in sec if x is not None]):.0f}' if ' + TTA' not in a else '(eval only)'
            name = a + (' (base recipe)' if a == 'none' and none_r != rname else '') + (f" (on {', '.join(sorted(set(cc_bases.get((ds, n, rname), []))))})" if a == 'class-conditional' else '')
            lines.append(f'| {name} | {fmt(v)} | {d} | {w} | {sec} |')
        lines.append('')
    if olds:
        lines += ['Old suggestion (robustness of a clean resnet10t reference, `quick_invariance_check`) per cell and seed:', '']
        for (ds, n, s), safe in olds.items():
            lines.append(f"- {ds} {n}/class seed {s}: " + ', '.join(f'{k} {v:g}' for k, v in safe.items()))
        lines.append('')
    explore = OUT / 'label_payoff_explore.md'
    if not args.explore and explore.exists():  # the exploration's measured tables, kept beside the payoff
        lines += [explore.read_text().replace('\n# ', '\n## ').replace('# ', '## ', 1)]
    Path(out).write_text('\n'.join(lines) + '\n')


if __name__ == '__main__':
    main()
