"The report's attribution section: Grad-CAM on the top losses, and the evidence of which maps can be trusted."
from __future__ import annotations
import html, time

import torch
from fastai.interpret import ClassificationInterpretation
from fastai.learner import Learner

from ..core import check_bool, check_count, check_type
from ..interpret import attribution_sanity, compare_attributions
from .page import fig_html, section

__all__ = ['faithfulness_verdicts', 'attribution_section']

_FMT = dict(float_format=lambda v: f'{v:.3f}', border=0)


def faithfulness_verdicts(table) -> list:
    """One sentence per method of a `compare_attributions` table (with 'random' among its methods): does it delete
    and insert better than the random map on these images, by more than twice the paired standard error?"""
    out = []
    for name, row in table.drop(index='random', errors='ignore').iterrows():
        said = []
        for k in ('deletion', 'insertion'):
            gain, se = row[f'{k}_gain_vs_random'], row[f'{k}_gain_se']
            verdict = 'better than' if gain > 2 * se else 'worse than' if gain < -2 * se else 'not distinguishable from'
            said.append(f'{k} {verdict} random ({gain:+.3f} ± {se:.3f})')
        out.append(f'{name}: {"; ".join(said)}')
    return out


def _valid_batch(learn, n):
    xs, seen = [], 0
    for xb, *_ in learn.dls.valid:
        xs.append(torch.as_tensor(xb).as_subclass(torch.Tensor)); seen += len(xb)
        if seen >= n: break
    return torch.cat(xs)[:n]


def attribution_section(learn: Learner,
                        n_top: int = 4,  # top losses shown with their Grad-CAM maps
                        n_images: int = 16,  # validation images of the faithfulness table and the sanity check
                        methods=('gradcam', 'occlusion', 'edges', 'random'),  # compared on the same images
                        steps: int = 8,  # points on each deletion/insertion curve
                        sanity: bool = True,  # add the parameter-randomization test of Grad-CAM
                        data_randomization: bool = False) -> str:  # ... and its label-shuffling variant (refits the head)
    """Grad-CAM for the predicted and the true class of the `n_top` largest losses; deletion/insertion AUC of
    `methods` on `n_images` validation images with each one's paired gain over a random map; and Adebayo et al.'s
    randomization test of Grad-CAM (`<section id="attribution">`)."""
    check_type('learn', learn, Learner, 'a fastai Learner')
    check_count('n_top', n_top); check_count('n_images', n_images); check_count('steps', steps)
    check_bool('sanity', sanity); check_bool('data_randomization', data_randomization)
    t0 = time.time()
    interp = ClassificationInterpretation.from_learner(learn)
    parts = ['<h3>Top losses with Grad-CAM</h3>',
             fig_html(interp.plot_top_losses(min(n_top, len(learn.dls.valid_ds)), heatmap='gradcam', show=False),
                      'top losses with Grad-CAM', dpi=72)]
    x = _valid_batch(learn, n_images)
    table = compare_attributions(learn, x, methods=tuple(dict.fromkeys([*methods, 'random'])), steps=steps)
    verdicts = ''.join(f'<li>{html.escape(v)}</li>' for v in faithfulness_verdicts(table))
    parts += [f'<h3>Which map can be trusted? Deletion and insertion on {len(x)} validation images</h3>',
              '<p class="note">Regions of an eighth of the side are removed (or inserted) most important first; a '
              'faithful map deletes with a lower AUC and inserts with a higher one than a random map. Gains are '
              'paired over the same images, ± one standard error.</p>',
              f'<ul>{verdicts}</ul>', table.to_html(**_FMT)]
    if sanity:
        tab, fig = attribution_sanity(learn, 'gradcam', x, data_randomization=data_randomization, show=False)
        parts += ['<h3>Sanity check: Grad-CAM as the layers are randomized from the top</h3>',
                  '<p class="note">Rank correlation and SSIM with the trained model\'s maps (Adebayo et al. 2018): '
                  'a map that explains the model decorrelates as its layers are randomized.</p>',
                  fig_html(fig, 'sanity check', dpi=72), tab.to_html(**_FMT)]
    parts.append(f'<p><small>Section computed in {time.time() - t0:.1f} s.</small></p>')
    return section('Attribution maps', '\n'.join(parts), id='attribution')
