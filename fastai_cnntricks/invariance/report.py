"""`InvarianceReport`: the results of `learn.invariance_check()` as a table, plots, safe magnitudes and suggested
transforms. It holds the numbers and a `redraw` function for the flipped items' images; the HTML page is the report
package's `invariance_section`."""
from __future__ import annotations

import numpy as np
import pandas as pd
import matplotlib.pyplot as plt

from ..core import CnnTricksError, check_number, check_count, check_bool
from .catalogue import suggested_tfms

__all__ = ['InvarianceReport']


def _magnitude_text(m): return f'{m:g}' if isinstance(m, (int, float)) else str(m)


class InvarianceReport:
    "Per (transform, magnitude): clean and augmented accuracy, affinity, flip rate, JS divergence, class transitions."
    def __init__(self,
                 sweep,  # [(FixedTfm, magnitudes)] as swept
                 keys,  # [(FixedTfm, magnitude)]: the non-neutral pairs, in the order of the statistics
                 stats,  # {'correct', 'flips', 'js', 'trans', 'n_y'}: numpy arrays per key (n_y per class)
                 ys,  # the items' true classes
                 clean_preds,  # the items' predicted classes without a transform
                 flips,  # per key, up to `keep_flips` (item index, new prediction) pairs
                 vocab=None,  # class names
                 redraw=None):  # redraw(key index, item indices) -> ({i: clean image}, {i: augmented image})
        self.sweep, self.keys, self.stats, self.ys, self.clean_preds = sweep, keys, stats, ys, clean_preds
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

    def transitions(self, tfm, magnitude, top=5) -> pd.DataFrame:
        """The most frequent class transitions among items whose prediction changed (true class -> new
        prediction, corrections excluded): count, share of the true class's items, share of all changed items."""
        name, k = self._key(tfm, magnitude)
        check_count('top', top)
        cols = ['true', 'pred', 'count', 'of_class', 'of_flips']
        if k is None: return pd.DataFrame(columns=cols)
        C = self.n_classes
        t = self.stats['trans'][k].reshape(C, C)
        order = np.argsort(-t, axis=None)[:top]
        rows = [(self.vocab[i // C], self.vocab[i % C], int(t.flat[i]), t.flat[i] / max(self.stats['n_y'][i // C], 1),
                 t.flat[i] / max(self.stats['flips'][k], 1)) for i in order if t.flat[i] > 0]
        return pd.DataFrame(rows, columns=cols)

    def _transition_text(self, tfm, magnitude, top=3):
        df = self.transitions(tfm, magnitude, top)
        return ', '.join(f'{r.true} → {r.pred} ({r.of_class:.0%})' for r in df.itertuples())

    def row(self, tfm, magnitude) -> dict:
        "One line of `table`: the measures for `tfm` at `magnitude`."
        name, k = self._key(tfm, magnitude)
        ft = self.tfms[name]
        if k is None: acc, fr, js, tt = self.clean_acc, 0., 0., ''
        else:
            acc, fr = self.stats['correct'][k] / self.n, self.stats['flips'][k] / self.n
            js, tt = self.stats['js'][k] / self.n, self._transition_text(name, magnitude)
        return dict(tfm=name, magnitude=magnitude, unit=ft.unit, clean_acc=self.clean_acc, acc=float(acc),
                    affinity=float(acc - self.clean_acc), flip_rate=float(fr), js=float(js), top_transitions=tt,
                    n_items=self.n)

    def safe_magnitudes(self, max_drop=0.02, interpolate=False) -> dict:
        """Per transform, the largest swept magnitude (going out from the neutral one) up to which the accuracy drop
        stays within `max_drop` (a fraction: 0.02 = 2 points). `interpolate`: linearly between the last safe and
        the first unsafe magnitude, where the drop crosses `max_drop`."""
        check_number('max_drop', max_drop, lo=0, hi=1)
        check_bool('interpolate', interpolate)
        res = {}
        for ft, ms in self.sweep:
            rows = [self.row(ft.name, m) for m in ms]  # ms: sorted by severity, neutral first
            safe, nxt = rows[0], None
            for r in rows[1:]:
                if -r['affinity'] > max_drop + 1e-12: nxt = r; break
                safe = r
            m = safe['magnitude']
            if interpolate and ft.continuous and nxt is not None and nxt['affinity'] != safe['affinity']:
                f = (-max_drop - safe['affinity']) / (nxt['affinity'] - safe['affinity'])
                m = safe['magnitude'] + f * (nxt['magnitude'] - safe['magnitude'])
            res[ft.name] = float(m)
        return res

    def suggest_tfms(self, max_drop=0.02) -> list:
        "fastai batch transforms at the safe magnitudes (transforms that are never safe are left out)."
        return suggested_tfms(self.safe_magnitudes(max_drop), self.tfms)

    def suggestions(self, max_drop=0.02) -> pd.DataFrame:
        "Per transform safe beyond its neutral magnitude: the safe magnitude, its unit and the fastai transform to train with."
        rows = []
        for name, m in self.safe_magnitudes(max_drop).items():
            t = self.tfms[name].suggest(m)
            if t is not None: rows.append(dict(tfm=name, safe_magnitude=m, unit=self.tfms[name].unit,
                                               train_with=type(t).__name__))
        return pd.DataFrame(rows, columns=['tfm', 'safe_magnitude', 'unit', 'train_with'])

    # -- pictures -------------------------------------------------------------------------------------------------
    def plot(self, tfms=None, max_drop=0.02, figsize=None):
        """Affinity and flip rate against magnitude, one line per transform. Magnitudes have different units, so
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
            a1.plot(x, df.affinity * 100, ls, marker='o', ms=3, label=lbl)
            a2.plot(x, df.flip_rate * 100, ls, marker='o', ms=3, label=lbl)
        if max_drop is not None: a1.axhline(-max_drop * 100, color='k', lw=.8, ls=':', label=f'-{max_drop:.0%} drop')
        a1.set(xlabel='magnitude (fraction of the sweep)', ylabel='affinity (points)',
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
        "Per transform: safe magnitude at `max_drop`, the worst magnitude's accuracy drop, flip rate and top transitions."
        safe, rows = self.safe_magnitudes(max_drop), []
        for ft, ms in self.sweep:
            worst = self.row(ft.name, ms[-1])
            rows.append(dict(tfm=ft.name, safe_magnitude=safe[ft.name], unit=ft.unit, worst_magnitude=ms[-1],
                             worst_drop=-worst['affinity'], worst_flip_rate=worst['flip_rate'],
                             top_transitions=worst['top_transitions']))
        return pd.DataFrame(rows)

    def worst(self):
        "(transform name, magnitude) with the highest flip rate."
        r = self.table.loc[self.table.flip_rate.idxmax()]
        return r.tfm, r.magnitude

    def _repr_html_(self): return self.summary()._repr_html_()

    def __repr__(self):
        return (f'InvarianceReport({len(self.tfms)} transforms, {len(self.keys)} magnitudes, {self.n} items, '
                f'clean accuracy {self.clean_acc:.3f})')
