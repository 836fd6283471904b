"The report's invariance section: plot, summary table, flip examples and suggested transforms of an `InvarianceReport`."
from __future__ import annotations
import html

from fastai.learner import Learner

from ..core import check_type, check_number, check_bool, check_count
from ..invariance import InvarianceReport, quick_invariance_check
from .page import fig_html, section

__all__ = ['suggestion_texts', 'invariance_section']


def suggestion_texts(rep: InvarianceReport, max_drop=0.02) -> list:
    "One line per suggested transform: the swept transform, its safe magnitude and unit, the fastai transform to train with."
    df = rep.suggestions(max_drop)
    return [f"{r.tfm} up to {r.safe_magnitude:g}{' ' + r.unit if r.unit else ''} (train with {r.train_with})"
            for r in df.itertuples()]


def invariance_section(rep,  # an InvarianceReport, or a Learner (then `quick_invariance_check` runs on it)
                       max_drop=0.02,  # tolerated accuracy drop (a fraction) for the safe magnitudes
                       n_items=256,  # validation items of the quick check on a Learner
                       title='Label invariance',  # the heading
                       flips=True) -> str:  # show the items whose prediction changed under the worst transform
    "`<section id=\"invariance\">`: how far each augmentation may go before predictions change."
    check_type('rep', rep, (InvarianceReport, Learner), 'an InvarianceReport (from learn.invariance_check()) or a Learner')
    check_number('max_drop', max_drop, lo=0, hi=1)
    check_count('n_items', n_items)
    check_type('title', title, str, 'a heading (str)')
    check_bool('flips', flips)
    if isinstance(rep, Learner): rep = quick_invariance_check(rep, n_items=n_items)
    fmt = dict(float_format=lambda v: f'{v:.3g}', index=False)
    body = ['<p>How far may each augmentation go before predictions change? Each transform at fixed magnitudes on '
            'the validation items: affinity (augmented minus clean accuracy), flip rate (predictions that change) '
            'and the class transitions of the changed items. The safe magnitude keeps the accuracy drop within '
            f'{max_drop:.0%}; the suggested transforms train within those magnitudes.</p>',
            f'<p>Clean accuracy {rep.clean_acc:.1%} on {rep.n} items; tolerance {max_drop:.0%} accuracy drop.</p>',
            fig_html(rep.plot(max_drop=max_drop), 'invariance', dpi=72), rep.summary(max_drop).to_html(**fmt)]
    if flips and len(rep.keys):
        name, m = rep.worst()
        body.append(f'<h3>Items whose prediction changed: {html.escape(name)} at {m:g}</h3>')
        body.append(fig_html(rep.show_flips(name, m), 'invariance', dpi=72))
    items = ''.join(f'<li>{html.escape(t)}</li>' for t in suggestion_texts(rep, max_drop))
    body.append(f'<h3>Suggested transforms</h3><ul>{items or "<li>none is safe</li>"}</ul>')
    body.append(f'<details><summary>Full table</summary>{rep.table.to_html(**fmt)}</details>')
    return section(title, '\n'.join(body), id='invariance')
