"The demo report's 'invariance' section: plot, summary table, flip examples and suggested transforms, as HTML."
from __future__ import annotations

__all__ = ['QUICK_SWEEP', 'quick_invariance_check', 'invariance_section']

# A sweep small enough for the demo (about 20 model passes over a few hundred items), still fine at small rotations.
QUICK_SWEEP = {'rotate': [0, 5, 10, 15, 30, 90, 180], 'shift': [0, .1, .2], 'zoom_in': [1, 1.25, 1.5],
               'darken': [1, .6, .3], 'contrast': [1, .5, .2], 'noise': [0, .05, .15], 'hflip': [0, 1],
               'vflip': [0, 1]}


def quick_invariance_check(learn, n_items=256, progress=False, **kwargs):
    "`learn.invariance_check` over `QUICK_SWEEP` on the first `n_items` validation items: the demo's check."
    from . import invariance  # noqa: F401  (adds Learner.invariance_check)
    return learn.invariance_check(list(QUICK_SWEEP), QUICK_SWEEP, n_items=n_items, progress=progress, **kwargs)


def invariance_section(learn_or_report, max_drop=0.02, n_items=256, title='Label invariance') -> str:
    """HTML `<section id="invariance">` for the demo report. Pass an `InvarianceReport` (e.g. the reference model's,
    whose `suggest_tfms()` chose the demo's augmentation) or a Learner (then `quick_invariance_check` runs on it)."""
    import html
    from .invariance_report import InvarianceReport
    rep = learn_or_report if isinstance(learn_or_report, InvarianceReport) else quick_invariance_check(
        learn_or_report, n_items=n_items)
    return (f'<section id="invariance"><h2>{html.escape(title)}</h2>'
            '<p>How far may each augmentation go before predictions change? Each transform at fixed magnitudes on '
            'the validation items: affinity (augmented minus clean accuracy), flip rate (predictions that change) '
            'and the class transitions of the changed items. The safe magnitude keeps the accuracy drop within '
            f'{max_drop:.0%}; the suggested transforms train within those magnitudes.</p>'
            f'{rep.to_html(max_drop=max_drop)}</section>')
