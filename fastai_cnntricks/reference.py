"""A reference model before any model of the user's is trained, for the label-invariance check.

The invariance check needs a classifier. Before training there are two cheap stand-ins: the embedded ImageNet
backbone (tf_efficientnet_lite0) with a linear classifier fitted on the frozen features of a few training batches,
or a small model trained from scratch on the clean data. This recipe combines the transfer wing (the learner, the
probe) with the invariance wing's purpose, so it lives beside the demo rather than inside a wing.
"""
from __future__ import annotations

from fastai.data.core import DataLoaders
from fasttransform import Pipeline

from .core import check_type, check_count, check_positive
from .transfer import timm_learner  # also patches Learner.probe_init_head

__all__ = ['reference_learner']


def _copy_dls(dls):
    "New DataLoaders over the same data and transforms: adding a transform (e.g. `Normalize`) leaves `dls` alone."
    loaders = [dl.new(after_batch=Pipeline(list(dl.after_batch.fs), split_idx=dl.after_batch.split_idx))
               for dl in dls.loaders]
    return DataLoaders(*loaders, path=dls.path, device=dls.device)


def reference_learner(dls,  # the user's DataLoaders (left unchanged: the learner gets a copy)
                      arch='tf_efficientnet_lite0',  # timm architecture
                      pretrained='embedded',  # weights (then a linear probe), or False (then trained from scratch)
                      n_batches=8,  # training batches the linear probe is fitted on
                      epochs=3,  # one-cycle epochs from scratch (pretrained=False)
                      lr=5e-3,  # their learning rate
                      **kwargs):  # passed to `timm_learner`
    """A Learner for the invariance check before training. With weights (the embedded ImageNet backbone by default):
    body frozen and a linear probe fitted on `n_batches` training batches -- cheap, but it inherits the invariances of
    pretraining (ImageNet models barely notice a horizontal flip, so they cannot see that a flipped digit changes
    class). With `pretrained=False`: `arch` trained from scratch on the clean data for `epochs` one-cycle epochs at
    `lr`, which has no such blind spot (e.g. `arch='resnet10t'` on 32 px digits; times in bench/RESULTS.md).
    The learner works on a copy of `dls`, so the `Normalize` the weights need is not added to the user's."""
    check_type('dls', dls, DataLoaders, 'fastai DataLoaders')
    check_type('arch', arch, str, 'a timm architecture name (str)')
    check_count('n_batches', n_batches)
    check_count('epochs', epochs)
    check_positive('lr', lr)
    learn = timm_learner(_copy_dls(dls), arch, pretrained=pretrained, **kwargs)
    if pretrained is not False: return learn.probe_init_head(max_batches=n_batches)
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(epochs, lr)
    return learn
