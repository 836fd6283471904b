"The report's interpretation section: filters, feature maps, unit visualizations and occlusion maps."
from __future__ import annotations
import html, time

import torch
from fastai.learner import Learner

from ..core import preserve_model, check_type, check_count, check_bool
from ..interpret import capture, StopForward, as_maps
from .page import fig_html, section

__all__ = ['two_depths', 'interpretation_section']


def two_depths(model) -> list:
    "An early and a late feature stage: timm's `feature_info` when there is one, else conv layers at 1/3 and 2/3."
    info = getattr(model, 'feature_info', None)
    mods = [i['module'] for i in info] if info else []
    names = {n for n, _ in model.named_modules()}
    mods = [m for m in mods if m in names]
    if len(mods) >= 3: return [mods[1], mods[-2]]
    convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    return [convs[len(convs) // 3], convs[2 * len(convs) // 3]]


def _strongest_units(learn, layer, n):
    "The `n` channels of `layer` with the highest mean activation on one validation batch (the livelier units)."
    x = torch.as_tensor(learn.dls.valid.one_batch()[0]).as_subclass(torch.Tensor)
    model = learn.model
    with preserve_model(model), torch.no_grad(), capture(model, [layer]) as acts:
        model.eval()
        try: model(x)
        except StopForward: pass
    means = as_maps(model, acts[layer]).mean((0, 2, 3))
    return means.argsort(descending=True)[:n].tolist()


def interpretation_section(learn: Learner,
                           n_units: int = 8,  # unit visualizations (with their top-activating images)
                           steps: int = 16,  # maximize_unit optimization steps
                           size: int = 64,  # maximize_unit image size
                           n_occlusion: int = 4,  # validation images with occlusion maps
                           top_k: int = 4,  # top-activating validation images shown per unit
                           faithfulness: bool = True,  # add the deletion/insertion curves to the occlusion maps
                           max_batches: int | None = 2) -> str:  # validation batches searched for top activations
    """First-layer filters, feature maps of one image at two depths, `n_units` unit visualizations beside their
    top-activating images, and occlusion maps for `n_occlusion` validation images (`<section id="interpretation">`)."""
    check_type('learn', learn, Learner, 'a fastai Learner')
    for name, v in dict(n_units=n_units, steps=steps, size=size, top_k=top_k).items(): check_count(name, v)
    check_count('n_occlusion', n_occlusion, allow_zero=True)
    check_count('max_batches', max_batches, allow_none=True)
    check_bool('faithfulness', faithfulness)
    t0 = time.time()
    model, ds = learn.model, learn.dls.valid_ds
    parts = []
    _, fig = learn.show_filters(show=False)
    parts += ['<h3>First-layer filters</h3>', fig_html(fig, 'first-layer filters')]
    early, late = two_depths(model)
    parts.append('<h3>Feature maps of one validation image at two depths</h3>')
    for name in (early, late):
        _, fig = learn.show_feature_maps(ds[0], name, max_n=15, sort=True, show=False)
        parts.append(fig_html(fig, f'feature maps {name}'))
    units = _strongest_units(learn, late, n_units)
    synth, _ = learn.maximize_unit(late, units, steps=steps, size=size, seed=0, progress=False, show=False)
    *_, fig = learn.top_activating(late, units, k=top_k, synth=synth, max_batches=max_batches, progress=False,
                                   show=False)
    parts += [f'<h3>{len(units)} units of <code>{html.escape(late)}</code>: synthetic image (maximize_unit, '
              f'{steps} steps) and top-{top_k} activating validation images'
              f'{" (first batches)" if max_batches else ""}</h3>', fig_html(fig, 'units')]
    img_h = learn.dls.valid.one_batch()[0].shape[-1]
    window = max(2, img_h // 4)
    parts.append(f'<h3>Occlusion maps ({window} px window, stride {window // 2})</h3>')
    for i in range(min(n_occlusion, len(ds))):
        _, curves, fig = learn.occlusion_map(ds[i], window=window, stride=max(1, window // 2),
                                             faithfulness=faithfulness, progress=False, show=False)
        parts.append(fig_html(fig, f'occlusion {i}'))
    parts.append(f'<p><small>Section computed in {time.time() - t0:.1f} s.</small></p>')
    return section('Interpretation', '\n'.join(parts), id='interpretation')
