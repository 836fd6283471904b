"`timm_learner`: a fastai Learner over a timm model, with stage-wise parameter groups and offline weights."
from __future__ import annotations

from fastai.vision.all import Learner, Normalize, accuracy, CrossEntropyLossFlat
from fastcore.meta import delegates

from ..core import CnnTricksError, check_bool, check_count, check_type
from .groups import timm_splitter
from .weights import create_timm_model, resolve_pretrained

__all__ = ['timm_learner', 'add_norm']


def add_norm(dls, mean, std):
    "Add `Normalize(mean, std)` to the DataLoaders' batch transforms unless one is there already (as fastai does)."
    if not any(isinstance(t, Normalize) for t in dls.after_batch.fs):
        dls.add_tfms([Normalize.from_stats(mean, std)], 'after_batch')
    return dls


@delegates(Learner.__init__)
def timm_learner(dls, arch: str, pretrained='auto', n_out: int | None = None, splitter=timm_splitter,
                 loss_func=None, metrics=accuracy, normalize=True, freeze=True, model_kwargs=None, **kwargs):
    """A Learner over timm's `arch` whose parameter groups are the model's stages (stem, stages..., head).

    `pretrained`: True (timm download), False, a checkpoint path, 'embedded' or 'auto' (embedded where shipped).
    Normalization comes from timm's pretrained config; with weights the body starts frozen, as in `vision_learner`."""
    check_type('arch', arch, str, "a timm model name (see timm.list_models())")
    check_count('n_out', n_out, allow_none=True)
    check_bool('normalize', normalize); check_bool('freeze', freeze)
    if model_kwargs is not None: check_type('model_kwargs', model_kwargs, dict, 'a dict of timm.create_model arguments')
    if n_out is None: n_out = getattr(dls, 'c', None)
    if not n_out: raise CnnTricksError("n_out is not given and the DataLoaders have no `c` (number of classes); pass n_out=")
    has_weights = resolve_pretrained(arch, pretrained) is not False  # before the model: 'auto' warns there
    model = create_timm_model(arch, pretrained, n_out=n_out, **(model_kwargs or {}))
    if normalize and has_weights:
        cfg = model.pretrained_cfg
        add_norm(dls, cfg.get('mean', (0.485, 0.456, 0.406)), cfg.get('std', (0.229, 0.224, 0.225)))
    learn = Learner(dls, model, loss_func=loss_func if loss_func is not None else CrossEntropyLossFlat(),
                    metrics=metrics, splitter=splitter, **kwargs)
    learn.arch = arch
    if has_weights and freeze: learn.freeze()
    return learn
