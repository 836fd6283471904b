"""`InvarianceReport`: the results of `learn.invariance_check()` and `label_invariance_check()` as a table, plots,
safe magnitudes and suggested transforms. It holds the numbers and a `redraw` function for the flipped items' images;
the HTML page is the report package's `invariance_section`.

Two axes, two kinds. Every report has the **robustness** axis of one model (columns `clean_acc`, `acc`, `affinity`,
`flip_rate`, `js`, `top_transitions`): how much that model's predictions move. A report of `label_invariance_check`
(`kind='label'`) also has the **label** axis (columns `label_*`, per class in `class_table()`): whether the label
survives, measured with references allowed to learn the invariance. `safe_magnitudes`, `transitions`, `summary` and
`suggest_tfms` use the report's own kind unless `axis=` says otherwise."""
from __future__ import annotations

import numpy as np
import pandas as pd
import matplotlib.pyplot as plt

from ..core import CnnTricksError, check_number, check_count, check_bool, check_choice
from ..augment import fuse_tfms
from .catalogue import suggested_tfms

__all__ = ['InvarianceReport', 'AXES', 'SWAP_MIN']

AXES = ('robustness', 'label')  # what a report measures: one model's predictions, or whether labels survive
# A transform swaps classes a and b when a clean reference reads at least this share of a's transformed items as b
# and of b's as a (label.py's docstring says why). Read off the default sweep on digits and Fashion-MNIST over two
# seeds (bench/results/label_invariance.md, the swap tables): digits' vertical flip and 135-180° turns lie above it,
# and no magnitude that the label drop finds safe at a 2-point tolerance does, except the flip.
SWAP_MIN = 0.35


def _magnitude_text(m): return f'{m:g}' if isinstance(m, (int, float)) else str(m)


def _drop_se(n, base, acc, dd):
    "(drop, standard error) of paired correctness: base accuracy - accuracy over `n` items (arrays broadcast)."
    with np.errstate(invalid='ignore', divide='ignore'):
        drop = (base - acc) / n
        se = np.sqrt(np.clip(dd / n - drop ** 2, 0, None) / np.maximum(n - 1, 1))
    return drop, se


class InvarianceReport:
    """Per (transform, magnitude): clean and augmented accuracy, affinity, flip rate, JS divergence, class
    transitions of one model (`kind='robustness'`); with `label`, also the label drop per class (`kind='label'`)."""
    def __init__(self,
                 sweep,  # [(FixedTfm, magnitudes)] as swept
                 keys,  # [(FixedTfm, magnitude)]: the non-neutral pairs, in the order of the statistics
                 stats,  # {'correct', 'flips', 'js', 'trans', 'n_y'}: numpy arrays per key (n_y per class)
                 ys,  # the items' true classes
                 clean_preds,  # the items' predicted classes without a transform
                 flips,  # per key, up to `keep_flips` (item index, new prediction) pairs
                 vocab=None,  # class names
                 redraw=None,  # redraw(key index, item indices) -> ({i: clean image}, {i: augmented image})
                 label=None,  # label axis per key and class: n, base, acc, ref_clean, dd, conf, base_conf (label.py)
                 robustness_model=None):  # what the robustness columns measured (text)
        self.sweep, self.keys, self.stats, self.ys, self.clean_preds = sweep, keys, stats, ys, clean_preds
        self.label, self.robustness_model = label, robustness_model
        self.kind = 'label' if label is not None else 'robustness'  # the axis safe_magnitudes & co. use by default
        self.flips, self.redraw = flips, redraw
        self.n_classes = len(stats['n_y'])
        self.vocab = [str(v) for v in vocab] if vocab is not None else [str(i) for i in range(self.n_classes)]
        self.tfms = {ft.name: ft for ft, _ in sweep}
        self.n = len(ys)
        self.clean_acc = float((clean_preds == ys).mean())
        self._index = {(ft.name, m): k for k, (ft, m) in enumerate(keys)}
        self.table = pd.DataFrame([self.row(ft.name, m) for ft, ms in sweep for m in ms])

    # -- numbers --------------------------------------------------------------------------------------------------
    def _name(self, tfm):
        "The name of a swept transform (given by name or as a `FixedTfm`)."
        name = getattr(tfm, 'name', tfm)
        if not isinstance(name, str) or name not in self.tfms:
            raise CnnTricksError(f"tfm={name!r} was not swept; swept: {', '.join(map(repr, self.tfms))}")
        return name

    def _key(self, tfm, magnitude):
        "(name, index of (tfm, magnitude) in the statistics); the index is None at the neutral magnitude."
        name = self._name(tfm)
        ft = self.tfms[name]
        check_number('magnitude', magnitude)
        if ft.severity(magnitude) == 0: return name, None
        if (name, magnitude) not in self._index:
            ms = [m for f, ms in self.sweep if f.name == name for m in ms]
            raise CnnTricksError(f"magnitude={magnitude!r} was not swept for {name!r}; swept: {ms}")
        return name, self._index[(name, magnitude)]

    def _axis(self, axis):
        "The axis asked for (None: this report's kind); 'label' needs a report of `label_invariance_check`."
        axis = self.kind if axis is None else check_choice('axis', axis, AXES)
        if axis == 'label' and self.label is None:
            raise CnnTricksError("axis='label' needs a report of label_invariance_check(dls); this one measured "
                                 "the robustness of one model (invariance_check)")
        return axis

    def transitions(self, tfm, magnitude, top=5, axis=None) -> pd.DataFrame:
        """The most frequent class transitions (true class -> predicted): count, share of the true class's items,
        share of all transitions. Robustness axis: items whose prediction changed (corrections excluded). Label
        axis: the colliding pairs, i.e. errors of the reference trained up to `magnitude` on transformed items in
        excess of its clean head's errors on clean ones."""
        name, k = self._key(tfm, magnitude)
        check_count('top', top)
        axis = self._axis(axis)
        cols = ['true', 'pred', 'count', 'of_class', 'of_flips']
        if k is None: return pd.DataFrame(columns=cols)
        C = self.n_classes
        if axis == 'label':
            t = np.clip(self.label['conf'][k] - self.label['base_conf'][k], 0, None)
            np.fill_diagonal(t, 0)
            n_y, total = self.label['n'], t.sum()
        else: t, n_y, total = self.stats['trans'][k].reshape(C, C), self.stats['n_y'], self.stats['flips'][k]
        order = np.argsort(-t, axis=None)[:top]
        rows = [(self.vocab[i // C], self.vocab[i % C], int(t.flat[i]), t.flat[i] / max(n_y[i // C], 1),
                 t.flat[i] / max(total, 1)) for i in order if t.flat[i] > 0]
        return pd.DataFrame(rows, columns=cols)

    def _swap_shares(self, k):
        "(C, C) min(share of a's items read as b, share of b's read as a) at key `k`: zeros without the swap signal."
        sw = self.label.get('swap') if self.label is not None else None
        if sw is None or k is None: return np.zeros((self.n_classes, self.n_classes))
        m = np.minimum(sw[k], sw[k].T)
        np.fill_diagonal(m, 0)
        return m

    def swaps(self, tfm, magnitude, min_share=SWAP_MIN) -> pd.DataFrame:
        """Label axis: the class pairs the transform swaps at `magnitude`: a clean reference reads at least
        `min_share` of a's transformed items as b and of b's as a (`a_to_b`, `b_to_a`). Both classes of a swapped pair
        count as label-changing there (`safe_magnitudes`), whatever the label drop."""
        name, k = self._key(tfm, magnitude)
        check_number('min_share', min_share, lo=0, hi=1)
        self._axis('label')
        cols = ['a', 'b', 'a_to_b', 'b_to_a']
        m = self._swap_shares(k)
        if k is None: return pd.DataFrame(columns=cols)
        sw = self.label['swap'][k]
        pairs = sorted(((m[i, j], i, j) for i in range(self.n_classes) for j in range(i + 1, self.n_classes)
                        if m[i, j] >= min_share and m[i, j] > 0), reverse=True)
        return pd.DataFrame([(self.vocab[i], self.vocab[j], float(sw[i, j]), float(sw[j, i])) for _, i, j in pairs],
                            columns=cols)

    def _swapped(self, k):
        "(C,) bool: the classes in a pair swapped at key `k` (SWAP_MIN)."
        return (self._swap_shares(k) >= SWAP_MIN).any(1)

    def _transition_text(self, tfm, magnitude, top=3, axis='robustness'):
        df = self.transitions(tfm, magnitude, top, axis=axis)
        return ', '.join(f'{r.true} → {r.pred} ({r.of_class:.0%})' for r in df.itertuples())

    def _label_row(self, name, magnitude, k):
        "The label axis of one (transform, magnitude): overall accuracy, drop and its standard error, collisions."
        L = self.label
        if k is None:  # the neutral magnitude: the clean head of this transform's references, on clean items
            k0 = next((i for i, (ft, _) in enumerate(self.keys) if ft.name == name), None)
            acc = float(L['base'][k0].sum() / L['n'].sum()) if k0 is not None else float('nan')
            return dict(label_base_acc=acc, label_acc=acc, label_drop=0., label_drop_se=0., label_ref_clean_acc=acc,
                        label_collisions='', label_swaps='')
        n = L['n'].sum()
        drop, se = _drop_se(n, L['base'][k].sum(), L['acc'][k].sum(), L['dd'][k].sum())
        return dict(label_base_acc=float(L['base'][k].sum() / n), label_acc=float(L['acc'][k].sum() / n),
                    label_drop=float(drop), label_drop_se=float(se),
                    label_ref_clean_acc=float(L['ref_clean'][k].sum() / n),
                    label_collisions=self._transition_text(name, magnitude, axis='label'),
                    label_swaps=', '.join(f'{r.a} ↔ {r.b} ({r.a_to_b:.0%}/{r.b_to_a:.0%})'
                                          for r in self.swaps(name, magnitude).itertuples()))

    def class_table(self) -> pd.DataFrame:
        """Label axis per (transform, magnitude, class): items, the clean head's accuracy on clean items, the
        accuracy of the reference trained up to the magnitude on transformed items, the drop and its standard error."""
        self._axis('label')
        L, rows = self.label, []
        for ft, ms in self.sweep:
            for m in ms:
                _, k = self._key(ft.name, m)
                for c in range(self.n_classes):
                    n = L['n'][c]
                    if k is None:  # neutral: this transform's clean head, as in `row`
                        k0 = next((i for i, (f, _) in enumerate(self.keys) if f.name == ft.name), None)
                        b = a = L['base'][k0][c] if k0 is not None else np.nan; dd = 0.
                    else: b, a, dd = L['base'][k][c], L['acc'][k][c], L['dd'][k][c]
                    drop, se = _drop_se(n, b, a, dd)
                    rows.append(dict(tfm=ft.name, magnitude=m, cls=self.vocab[c], n=int(n), base_acc=b / max(n, 1),
                                     label_acc=a / max(n, 1), label_drop=float(drop), label_drop_se=float(se)))
        return pd.DataFrame(rows)

    def row(self, tfm, magnitude) -> dict:
        "One line of `table`: the measures for `tfm` at `magnitude`."
        name, k = self._key(tfm, magnitude)
        ft = self.tfms[name]
        if k is None: acc, fr, js, tt = self.clean_acc, 0., 0., ''
        else:
            acc, fr = self.stats['correct'][k] / self.n, self.stats['flips'][k] / self.n
            js, tt = self.stats['js'][k] / self.n, self._transition_text(name, magnitude)
        row = dict(tfm=name, magnitude=magnitude, unit=ft.unit)
        if self.label is not None: row.update(self._label_row(name, magnitude, k))
        return {**row, **dict(clean_acc=self.clean_acc, acc=float(acc), affinity=float(acc - self.clean_acc),
                              flip_rate=float(fr), js=float(js), top_transitions=tt, n_items=self.n)}

    @staticmethod
    def _safe_along(ft, ms, drops, max_drop, interpolate):
        "The largest magnitude of `ms` (neutral first) before the first whose drop exceeds `max_drop`."
        i = 0
        while i + 1 < len(ms) and not drops[i + 1] > max_drop + 1e-12: i += 1  # NaN (no items) counts as unsafe
        m = ms[i]
        if interpolate and ft.continuous and i + 1 < len(ms) and np.isfinite(drops[i + 1]) and drops[i + 1] != drops[i]:
            m = ms[i] + (max_drop - drops[i]) / (drops[i + 1] - drops[i]) * (ms[i + 1] - ms[i])
        return float(m)

    def _drops(self, ft, ms, axis):
        "Drop per magnitude of `ms`: overall (n_magnitudes,) on the robustness axis, (n_magnitudes, classes) on the label axis."
        if axis == 'robustness': return np.array([-self.row(ft.name, m)['affinity'] for m in ms])
        L, res = self.label, []
        for m in ms:
            _, k = self._key(ft.name, m)
            if k is None: res.append(np.zeros(self.n_classes)); continue
            d = _drop_se(L['n'], L['base'][k], L['acc'][k], L['dd'][k])[0]
            res.append(np.where(self._swapped(k), np.inf, d))  # a swapped class changes its label: never safe
        return np.array(res)

    def safe_magnitudes(self, max_drop=0.02, interpolate=False, per_class=False, axis=None):
        """Per transform, the largest swept magnitude (going out from the neutral one) up to which the drop stays
        within `max_drop` (a fraction: 0.02 = 2 points); an on/off transform that is not safe gets its neutral
        value. Robustness axis: the model's accuracy drop (-affinity). Label axis: the label drop (reference
        trained up to the magnitude, on transformed items, against the clean head on clean ones), and a magnitude
        that swaps two classes (`swaps`) is unsafe for both (overall: for the transform); `per_class`: a
        class x transform DataFrame. `interpolate`: linearly where the drop crosses `max_drop`. `axis`: None
        (this report's `kind`), 'robustness' or 'label'."""
        check_number('max_drop', max_drop, lo=0, hi=1)
        check_bool('interpolate', interpolate)
        check_bool('per_class', per_class)
        axis = self._axis(axis)
        if per_class and axis != 'label':
            raise CnnTricksError("per_class=True needs the label axis (a report of label_invariance_check)")
        res = {}
        for ft, ms in self.sweep:  # ms: sorted by severity, neutral first
            d = self._drops(ft, ms, axis)
            if not per_class:
                if axis == 'label':
                    L = self.label
                    d = np.array([0.] + [np.inf if self._swapped(k).any() else
                                         (L['base'][k].sum() - L['acc'][k].sum()) / L['n'].sum()
                                         for k in [self._key(ft.name, m)[1] for m in ms[1:]]])
                res[ft.name] = self._safe_along(ft, ms, d, max_drop, interpolate)
            else: res[ft.name] = [self._safe_along(ft, ms, d[:, c], max_drop, interpolate) for c in range(self.n_classes)]
        return pd.DataFrame(res, index=pd.Index(self.vocab, name='class')) if per_class else res

    def retained(self, tfm, magnitude) -> float:
        """Robustness axis: the share of its above-chance accuracy the clean model keeps on images transformed at
        `magnitude`, (acc - 1/C) / (clean_acc - 1/C): 1 unchanged, 0 at chance (C classes)."""
        r, chance = self.row(tfm, magnitude), 1 / self.n_classes
        return float((r['acc'] - chance) / max(r['clean_acc'] - chance, 1e-12))

    def train_magnitudes(self, max_drop=0.02, axis=None, min_retained=0.5) -> dict:
        """{transform name: the magnitude `suggest_tfms` trains up to}. Robustness axis: the safe magnitudes.

        Label axis: the label decides what is allowed, the clean model's robustness only prefers within it. Each
        transform's limit is its label-safe magnitude (`safe_magnitudes(max_drop, axis='label')`); going out from
        the neutral one through the swept magnitudes inside that limit, it stops before the first at which the
        clean model keeps less than `min_retained` of its above-chance accuracy (`retained`), but never below the
        first non-neutral swept magnitude. So the robustness axis can shorten a range, never extend it, and never
        add or remove a transform; on/off transforms (flips) are kept or left out by the label axis alone;
        `min_retained=0` gives the label-safe magnitudes themselves.

        Why a soft preference at all: past the point where a clean model falls more than half-way to chance, the
        transformed images lie far from the clean distribution even though their labels survive: low *affinity*,
        and Gontijo-Lopes et al. (2020) found the augmentations that help most combine diversity with high affinity.
        Whether the preference pays on a given recipe is the payoff benchmark's question (bench/label_payoff.py).
        On digits (bench/results/label_invariance.md) it keeps rotation at its label-safe 20° (the clean model keeps
        88% there) and holds shifts at 0.1 (label-safe to 0.15, where the clean model keeps 28%) and darkening at
        0.4x (label-safe to 0.2x, where it is at chance)."""
        check_number('min_retained', min_retained, lo=0, hi=1)
        axis = self._axis(axis)
        safe = self.safe_magnitudes(max_drop, axis=axis)
        if axis == 'robustness' or min_retained == 0: return safe
        res = {}
        for ft, ms in self.sweep:  # ms: sorted by severity, neutral first
            lim = safe[ft.name]
            inside = [m for m in ms if 0 < ft.severity(m) <= ft.severity(lim) + 1e-12]
            i = 0
            while i + 1 < len(inside) and self.retained(ft.name, inside[i + 1]) >= min_retained: i += 1
            res[ft.name] = float(inside[i]) if inside else lim
        return res

    def suggest_tfms(self, max_drop=0.02, axis=None, min_retained=0.5, fuse=None) -> list:
        """fastai batch transforms that train within `train_magnitudes(max_drop, axis, min_retained)` (transforms
        that are never safe are left out; zoom in/out and darken/brighten pairs merge). `fuse`: the geometric ones
        multiplied into one resampling pass and the pixel ones chained (`fuse_tfms`); None fuses on the label axis
        and keeps the robustness axis's transforms one by one, as `invariance_check` has always returned them."""
        if fuse is not None: check_bool('fuse', fuse)
        axis = self._axis(axis)
        tfms = suggested_tfms(self.train_magnitudes(max_drop, axis=axis, min_retained=min_retained), self.tfms)
        if fuse is None: fuse = axis == 'label'
        return fuse_tfms(tfms) if fuse and tfms else tfms

    def suggestions(self, max_drop=0.02, axis=None, min_retained=0.5) -> pd.DataFrame:
        """Per transform suggested (trained beyond its neutral magnitude): the safe magnitude of the axis, the
        magnitude it trains up to (`train_magnitudes`), its unit, the fastai transform to train with, and the share
        of its above-chance accuracy the clean model keeps at that magnitude (`retained`)."""
        axis = self._axis(axis)
        safe = self.safe_magnitudes(max_drop, axis=axis)
        rows = []
        for name, m in self.train_magnitudes(max_drop, axis=axis, min_retained=min_retained).items():
            t = self.tfms[name].suggest(m)
            if t is not None: rows.append(dict(tfm=name, safe_magnitude=safe[name], train_magnitude=m,
                                               unit=self.tfms[name].unit, train_with=type(t).__name__,
                                               retained=self.retained(name, m)))
        return pd.DataFrame(rows, columns=['tfm', 'safe_magnitude', 'train_magnitude', 'unit', 'train_with', 'retained'])

    # -- pictures -------------------------------------------------------------------------------------------------
    def plot(self, tfms=None, max_drop=0.02, figsize=None):
        """Affinity (a label report: minus the label drop) and flip rate against magnitude, one line per transform. Magnitudes have different units, so
        the x axis is each transform's position in its own sweep (0 = neutral, 1 = its largest magnitude)."""
        if isinstance(tfms, str): tfms = [tfms]
        names = list(self.tfms) if tfms is None else [self._name(t) for t in tfms]
        check_number('max_drop', max_drop, lo=0, hi=1, allow_none=True)
        if max_drop is not None: check_number('max_drop', max_drop, lo=0, hi=1)
        fig, (a1, a2) = plt.subplots(1, 2, figsize=figsize or (12, 4))
        for i, nm in enumerate(names):
            df = self.table[self.table.tfm == nm]
            sev = np.array([self.tfms[nm].severity(m) for m in df.magnitude])
            x = sev / max(sev.max(), 1e-12)
            lbl = f"{nm} (max {_magnitude_text(df.magnitude.iloc[-1])}{self.tfms[nm].unit and ' ' + self.tfms[nm].unit})"
            ls = '-' if i < 10 else '--'
            a1.plot(x, (-df.label_drop if self.kind == 'label' else df.affinity) * 100, ls, marker='o', ms=3, label=lbl)
            a2.plot(x, df.flip_rate * 100, ls, marker='o', ms=3, label=lbl)
        if max_drop is not None: a1.axhline(-max_drop * 100, color='k', lw=.8, ls=':', label=f'-{max_drop:.0%} drop')
        if self.kind == 'label':
            a1.set(xlabel='magnitude (fraction of the sweep)', ylabel='- label drop (points)',
                   title='label axis: reference allowed to learn the invariance')
        else: a1.set(xlabel='magnitude (fraction of the sweep)', ylabel='affinity (points)',
                     title=f'affinity = augmented - clean accuracy (clean {self.clean_acc:.1%})')
        a2.set(xlabel='magnitude (fraction of the sweep)', ylabel='flip rate (%)', title='predictions changed')
        for a in (a1, a2): a.grid(alpha=.3)
        a2.legend(fontsize=7, loc='center left', bbox_to_anchor=(1, .5))
        fig.tight_layout()
        plt.close(fig)  # returned, not left open: a notebook displays the returned Figure once, not twice
        return fig

    def _images(self, k, idxs):
        "Clean and augmented image-space images of the items `idxs`, redrawn exactly as in the sweep."
        if self.redraw is None: raise CnnTricksError("this report keeps no data; show_flips needs the report of a sweep")
        return self.redraw(k, idxs)

    def show_flips(self, tfm, magnitude, k=9, ncols=3, figsize=None):
        "Grid of up to `k` items whose prediction changed at `magnitude`: clean and augmented, with labels."
        name, key = self._key(tfm, magnitude)
        check_count('k', k)
        check_count('ncols', ncols)
        items = [] if key is None else self.flips[key][:k]
        if not items:
            fig, ax = plt.subplots(figsize=(4, 1)); ax.axis('off')
            ax.text(.5, .5, f'no prediction changed under {name} at {_magnitude_text(magnitude)}', ha='center', va='center')
            return fig
        clean, aug = self._images(key, [i for i, _ in items])
        nrows = -(-len(items) // ncols)
        fig, axs = plt.subplots(nrows, 2 * ncols, figsize=figsize or (2.6 * ncols, 1.45 * nrows + .4), squeeze=False)
        for a in axs.flat: a.axis('off')
        for j, (i, pa) in enumerate(items):
            r, c = divmod(j, ncols)
            y, pc = self.vocab[self.ys[i]], self.vocab[self.clean_preds[i]]
            for a, img, title in ((axs[r, 2 * c], clean[i], f'true {y} · pred {pc}'),
                                  (axs[r, 2 * c + 1], aug[i], f'→ {self.vocab[pa]}')):
                a.imshow(img.float().clamp(0, 1).permute(1, 2, 0).squeeze(-1).numpy(), cmap='gray')
                a.set_title(title, fontsize=8, color='k' if title.startswith('true') else 'firebrick')
        fig.suptitle(f'{name} at {_magnitude_text(magnitude)}{self.tfms[name].unit and " " + self.tfms[name].unit}: '
                     f'{self.row(name, magnitude)["flip_rate"]:.1%} of predictions change', fontsize=9)
        fig.tight_layout()
        return fig

    # -- text -----------------------------------------------------------------------------------------------------
    def summary(self, max_drop=0.02) -> pd.DataFrame:
        """Per transform: safe magnitude at `max_drop`, the worst magnitude's accuracy drop, flip rate and top
        transitions (robustness axis); a label report puts the label-safe magnitude, the worst label drop and the
        colliding pairs first."""
        safe, rows = self.safe_magnitudes(max_drop, axis='robustness'), []
        lsafe = self.safe_magnitudes(max_drop, axis='label') if self.label is not None else None
        for ft, ms in self.sweep:
            worst = self.row(ft.name, ms[-1])
            r = dict(tfm=ft.name)
            if lsafe is not None:
                r.update(label_safe_magnitude=lsafe[ft.name], worst_label_drop=worst['label_drop'],
                         label_collisions=worst['label_collisions'], label_swaps=worst['label_swaps'])
            r.update(safe_magnitude=safe[ft.name], unit=ft.unit, worst_magnitude=ms[-1], worst_drop=-worst['affinity'],
                     worst_flip_rate=worst['flip_rate'], top_transitions=worst['top_transitions'])
            rows.append(r)
        return pd.DataFrame(rows)

    def worst(self):
        "(transform name, magnitude) with the highest flip rate."
        r = self.table.loc[self.table.flip_rate.idxmax()]
        return r.tfm, r.magnitude

    def _repr_html_(self): return self.summary()._repr_html_()

    def __repr__(self):
        return (f'InvarianceReport({self.kind}, {len(self.tfms)} transforms, {len(self.keys)} magnitudes, {self.n} items, '
                f'clean accuracy {self.clean_acc:.3f})')
