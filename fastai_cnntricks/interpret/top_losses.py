"""fastai's `plot_top_losses` with heat maps (fastai v1's `heatmap=True`, for v2): each top loss with the map for the
predicted class and the one for the true class. Without `heatmap` it is fastai's own, unchanged."""
from __future__ import annotations

import torch
from fastai.interpret import ClassificationInterpretation, Interpretation
from fastcore.basics import patch
from fastcore.xtras import is_listy

from ..core import preserve_model, check_bool, check_choice, check_count, check_int, check_number
from .cam import class_label, heat_tiles
from .faithfulness import attribution_method
from .inputs import input_stats, to_display
from .plots import finish, image_grid

__all__ = ['HEATMAPS']

HEATMAPS = ['gradcam', 'cam', 'occlusion', None]


@patch
def plot_top_losses(self: ClassificationInterpretation,
                    k,  # number of losses to plot, or which ones (a list or range of ranks)
                    largest: bool = True,  # sort losses by largest or smallest
                    heatmap: str | None = None,  # 'gradcam', 'cam' or 'occlusion' (None: fastai's plot, unchanged)
                    alpha: float = 0.5,  # opacity of the maps over the images
                    show: bool = True,
                    **kwargs):  # to fastai's plot (heatmap None) or to the map's method (e.g. `layer=`, `window=`)
    """Show the `k` largest (or smallest) losses. With `heatmap`, a row per image: the image titled
    prediction/actual/loss/probability, the map for the predicted class and the map for the true class; returns the
    Figure. Without, fastai's own `plot_top_losses`."""
    check_choice('heatmap', heatmap, HEATMAPS)
    if heatmap is None: return Interpretation.plot_top_losses(self, k, largest, **kwargs)
    if not (is_listy(k) or isinstance(k, range)): check_count('k', k)
    else: [check_int('k', i, lo=0) for i in k]
    check_bool('largest', largest); check_number('alpha', alpha, lo=0, hi=1); check_bool('show', show)
    losses, idx = (o[k] for o in self.top_losses(None, largest)) if is_listy(k) or isinstance(k, range) \
        else self.top_losses(k, largest)
    model = self.learn.model
    with preserve_model(model): inps, probs, targs, _, _ = self[idx]  # fastai's get_preds leaves it in eval mode
    x = (inps[0] if isinstance(inps, tuple) else inps).as_subclass(torch.Tensor).to(next(model.parameters()).device)
    preds, targs = probs.argmax(1), targs.as_subclass(torch.Tensor).long()
    fn = attribution_method(heatmap, input_stats(self.learn, x.device), **kwargs)
    imgs = to_display(self.learn, x)
    for_pred, for_true = heat_tiles(imgs, fn(model, x, preds), alpha), heat_tiles(imgs, fn(model, x, targs), alpha)
    tiles, titles = [], []
    for i, (p, t, loss) in enumerate(zip(preds.tolist(), targs.tolist(), losses)):
        pl, tl = class_label(self.learn, p), class_label(self.learn, t)
        tiles += [imgs[i], for_pred[i], for_true[i]]
        titles += [f'{pl}/{tl} / {float(loss):.2f} / {float(probs[i].max()):.2f}', f'{heatmap}: {pl}', f'{heatmap}: {tl}']
    fig = image_grid(tiles, titles=titles, ncols=3, size=2, suptitle='Prediction/Actual/Loss/Probability, '
                     'then the map for the prediction and for the actual class')
    return finish(fig, show)
