"""The report's invariance section: plot, summary table, flip examples and suggested transforms of an `InvarianceReport`;
for a report of `label_invariance_check` also both axes side by side, the per-class label-safe table, the colliding
class pairs and the augmentation policy a run trained with."""
from __future__ import annotations
import html

from fastai.learner import Learner

from ..core import CnnTricksError, check_type, check_number, check_bool, check_count
from ..invariance import InvarianceReport, quick_invariance_check
from .page import fig_html, section

__all__ = ['suggestion_texts', 'collision_table', 'invariance_section']

_FMT = dict(float_format=lambda v: f'{v:.3g}', index=False)
# summary columns of the robustness axis, renamed on the page of a label report so that each column says its axis
_ROBUST_NAMES = dict(safe_magnitude='robustness_safe_magnitude', worst_drop='robustness_worst_drop',
                     worst_flip_rate='robustness_worst_flip_rate', top_transitions='robustness_transitions')


def _unit(u): return f' {u}' if u else ''


def suggestion_texts(rep: InvarianceReport, max_drop=0.02) -> list:
    """One line per suggested transform: the swept transform, the magnitude it trains up to and its unit, the fastai
    transform to train with; on the label axis, the label-safe limit where the clean model's robustness held it lower."""
    df = rep.suggestions(max_drop)
    lines = []
    for r in df.itertuples():
        on_off = not rep.tfms[r.tfm].continuous
        t = f"{r.tfm}{' on' if on_off else f' up to {r.train_magnitude:g}{_unit(r.unit)}'} (train with {r.train_with}"
        if rep.kind == 'label' and r.train_magnitude != r.safe_magnitude:
            t += (f"; label-safe up to {r.safe_magnitude:g}{_unit(r.unit)}, held at {r.train_magnitude:g} beyond "
                  f"which a clean model falls more than half-way to chance")
        lines.append(t + ')')
    return lines


def collision_table(rep: InvarianceReport, max_drop=0.02, top=3):
    """Label axis, per transform that stops short of its sweep: the first magnitude past its label-safe limit and its
    largest, each with the label drop and the colliding class pairs (`transitions(..., axis='label')`)."""
    import pandas as pd
    check_type('rep', rep, InvarianceReport, 'an InvarianceReport of label_invariance_check')
    check_count('top', top)
    safe, rows = rep.safe_magnitudes(max_drop, axis='label'), []
    for ft, ms in rep.sweep:
        past = [m for m in ms if ft.severity(m) > ft.severity(safe[ft.name]) + 1e-12]
        for m in dict.fromkeys([past[0], past[-1]] if past else []):
            r = rep.row(ft.name, m)
            pairs = [f'{t.true} → {t.pred} ({t.of_class:.0%})' for t in
                     rep.transitions(ft.name, m, top=top, axis='label').itertuples()]
            rows.append(dict(tfm=ft.name, magnitude=m, unit=ft.unit, label_drop=r['label_drop'],
                             label_drop_se=r['label_drop_se'],
                             collisions=', '.join(([f"swaps {r['label_swaps']}"] if r['label_swaps'] else []) + pairs)))
    return pd.DataFrame(rows, columns=['tfm', 'magnitude', 'unit', 'label_drop', 'label_drop_se', 'collisions'])


def _label_body(rep, max_drop):
    "The parts of a label report: both axes, per class, collisions."
    n_cls = rep.n_classes
    body = [f'<p>Does the <b>label</b> survive each transform? Per transform, small CNNs trained from scratch '
            f'<i>with</i> it (one head per magnitude range, every image answered out of fold) classify transformed '
            f'images; the <b>label drop</b> is their accuracy on images transformed at a magnitude against the clean '
            f'head on clean images. A label that survives costs nothing once the reference may learn the invariance; '
            f'one that changes (a 6 turned by 180° reads as a 9) cannot be learnt away, and the extra errors land on '
            f'the colliding pair. A transform that a clean model reads as turning class a into b <i>and</i> b into a '
            f'(a vertical flip turns a 2 into a 5 and a 5 into a 2) <b>swaps</b> them: both change their label there, '
            f'whatever the drop. Label-safe: label drop within {max_drop:.0%} and no swap.</p>',
            f'<p>Beside it, the <b>robustness</b> axis (columns <code>robustness_*</code>): how much the predictions '
            f'of a clean model move, measured on {html.escape(rep.robustness_model or "a clean model")} (clean '
            f'accuracy {rep.clean_acc:.1%} on {rep.n} items, {n_cls} classes). A clean model is not invariant to '
            f'transforms that keep labels, so this axis only tunes the suggestion within the label-safe range '
            f'(<code>train_magnitudes</code>), it never decides what is allowed.</p>',
            fig_html(rep.plot(max_drop=max_drop), 'invariance', dpi=72),
            '<h3>Both axes per transform</h3>',
            rep.summary(max_drop).rename(columns=_ROBUST_NAMES).to_html(**_FMT),
            '<h3>Label-safe magnitude per class</h3>',
            '<p>Each class\'s largest label-preserving magnitude (<code>safe_magnitudes(per_class=True)</code>); '
            'class-conditional augmentation applies a transform only to the classes that keep their label.</p>',
            rep.safe_magnitudes(max_drop, per_class=True).to_html(float_format=lambda v: f'{v:.3g}')]
    col = collision_table(rep, max_drop)
    body.append('<h3>Colliding class pairs</h3><p>Past the label-safe limit: the first magnitude that is not '
                'label-safe and the largest swept, with the classes the reference confuses in excess of its clean '
                'head (share of the true class\'s items).</p>')
    body.append(col.to_html(**_FMT) if len(col) else '<p>every swept magnitude of every transform is label-safe</p>')
    return body


def invariance_section(rep,  # an InvarianceReport, or a Learner (then `quick_invariance_check` runs on it)
                       max_drop=0.02,  # tolerated accuracy drop (a fraction) for the safe magnitudes
                       n_items=256,  # validation items of the quick check on a Learner
                       title='Label invariance',  # the heading
                       flips=True,  # show the items whose prediction changed under the worst transform
                       trained_with=None) -> str:  # (policy name, [description lines]) a run trained with; None: the suggested transforms
    """`<section id=\"invariance\">`: how far each augmentation may go. A robustness report: before predictions change.
    A label report: before labels change (both axes, per class, colliding pairs), and the policy trained with."""
    check_type('rep', rep, (InvarianceReport, Learner), 'an InvarianceReport (from learn.invariance_check()) or a Learner')
    check_number('max_drop', max_drop, lo=0, hi=1)
    check_count('n_items', n_items)
    check_type('title', title, str, 'a heading (str)')
    check_bool('flips', flips)
    if trained_with is not None:
        ok = (isinstance(trained_with, (tuple, list)) and len(trained_with) == 2 and isinstance(trained_with[0], str)
              and isinstance(trained_with[1], (list, tuple)) and all(isinstance(t, str) for t in trained_with[1]))
        if not ok: raise CnnTricksError(f"trained_with={trained_with!r} is not valid; pass (policy name, [lines of text]) "
                                        "or None")
    if isinstance(rep, Learner): rep = quick_invariance_check(rep, n_items=n_items)
    if rep.kind == 'label': body = _label_body(rep, max_drop)
    else:
        body = ['<p>How far may each augmentation go before predictions change? Each transform at fixed magnitudes on '
                'the validation items: affinity (augmented minus clean accuracy), flip rate (predictions that change) '
                'and the class transitions of the changed items. The safe magnitude keeps the accuracy drop within '
                f'{max_drop:.0%}; the suggested transforms train within those magnitudes.</p>',
                f'<p>Clean accuracy {rep.clean_acc:.1%} on {rep.n} items; tolerance {max_drop:.0%} accuracy drop.</p>',
                fig_html(rep.plot(max_drop=max_drop), 'invariance', dpi=72), rep.summary(max_drop).to_html(**_FMT)]
    if flips and len(rep.keys):
        name, m = rep.worst()
        who = 'the clean model\'s ' if rep.kind == 'label' else ''
        body.append(f'<h3>Items whose {who}prediction changed: {html.escape(name)} at {m:g}</h3>')
        body.append(fig_html(rep.show_flips(name, m), 'invariance', dpi=72))
    items = ''.join(f'<li>{html.escape(t)}</li>' for t in suggestion_texts(rep, max_drop))
    body.append(f'<h3>Suggested transforms</h3><ul>{items or "<li>none is safe</li>"}</ul>')
    if trained_with is not None:
        name, lines = trained_with
        items = ''.join(f'<li>{html.escape(t)}</li>' for t in lines)
        body.append(f'<h3>Trained with: {html.escape(name)}</h3><ul>{items or "<li>no augmentation</li>"}</ul>')
    body.append(f'<details><summary>Full table</summary>{rep.table.to_html(**_FMT)}</details>')
    return section(title, '\n'.join(body), id='invariance')
