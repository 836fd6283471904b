"`DiversityMonitor`: the diversity measure of Gontijo-Lopes et al. (2020), logged to the recorder each epoch."
from __future__ import annotations

import torch
from fastai.callback.core import Callback
from fastai.learner import ValueMetric
from fastai.vision.augment import RandTransform

from ..core import preserve_model, model_device, check_count, check_type

__all__ = ['DiversityMonitor']


class DiversityMonitor(Callback):
    """Diversity = training loss with augmentation / training loss without, for the current model.

    The paper compares the final training losses of a model trained with and one trained without the augmentation.
    Training twice is what we avoid, so each epoch this callback measures the same idea on the model being trained:
    the mean loss (eval mode, no gradients) on the first `n_batches` training batches with the DataLoader's random
    batch transforms, divided by the loss on the same items without them. 1 means the augmentation adds nothing the
    model finds hard; large values mean diverse (or label-breaking) augmentation. Logged as the `diversity` column."""
    order = 45  # after the training phase, before the Recorder (50) logs the epoch's row
    run_valid = False

    def __init__(self,
                 n_batches=4,  # training batches measured per epoch
                 metric_name='diversity'):  # column name in the recorder
        self.n_batches = check_count('n_batches', n_batches)
        self.metric_name = check_type('metric_name', metric_name, str, 'a column name (str)')
        self.values, self._value = [], None

    def before_fit(self):
        self._metric = ValueMetric(lambda: self._value, self.metric_name)
        if not any(getattr(m, 'name', None) == self.metric_name for m in self.learn.metrics):
            self.learn.metrics = list(self.learn.metrics) + [self._metric]

    def after_fit(self):
        self.learn.metrics = [m for m in self.learn.metrics if m is not self._metric]

    def _loss(self, dl):
        dev, tot, n = model_device(self.learn.model), 0., 0
        for i, (xb, yb) in enumerate(dl):
            if i >= self.n_batches: break
            # plain tensors: fastai's TensorImage/TensorCategory pair has no cross_entropy dispatch
            out = self.learn.model(xb.to(dev).as_subclass(torch.Tensor))
            tot += float(self.learn.loss_func(out.as_subclass(torch.Tensor), yb.to(dev).as_subclass(torch.Tensor))) * len(xb)
            n += len(xb)
        return tot / max(n, 1)

    def after_train(self):
        dl = self.learn.dls.train
        clean = [t for t in dl.after_batch.fs if not isinstance(t, RandTransform)]
        # Same items in the same order: the augmented pipeline and the pipeline without its random transforms.
        aug_dl, clean_dl = dl.new(shuffle=False, drop_last=False), dl.new(shuffle=False, drop_last=False, after_batch=clean)
        state = torch.random.get_rng_state()
        with preserve_model(self.learn.model), torch.no_grad():
            self.learn.model.eval()
            self._value = self._loss(aug_dl) / max(self._loss(clean_dl), 1e-12)
        torch.random.set_rng_state(state)  # measuring must not change the training run's random draws
        self.values.append(self._value)
