"Guards and gauges against catastrophic forgetting: the L2-SP penalty and `DriftMonitor` (weight drift, feature CKA, source accuracy)."
from __future__ import annotations

import torch
from torch import nn
from fastai.callback.core import Callback, GatherPredsCallback
from fastai.learner import ValueMetric

from ..core import CnnTricksError, check_bool, check_positive, check_type, preserve_model, unwrap_ddp
from .groups import head_module

__all__ = ['L2SP', 'DriftMonitor', 'linear_cka', 'body_features']




def _head_ids(model):
    try: return {id(p) for p in head_module(model).parameters()}
    except CnnTricksError: return set()


class L2SP(Callback):
    """L2-SP (Li, Grandvalet & Davoine 2018): adds `alpha/2 * ||w - w0||^2` over the pretrained parameters and
    `beta/2 * ||w||^2` over the new head to the training loss; `w0` is recorded when the callback first trains and
    kept across fits (call `reset()` to forget it). Use `wd=0` so the optimizer's decay does not pull towards 0."""
    order = 20
    run_valid = False

    def __init__(self, alpha: float = 0.01,  # pull of the pretrained weights towards their starting values
                 beta: float = 0.01):  # plain L2 on the new head
        check_positive('alpha', alpha, allow_zero=True); check_positive('beta', beta, allow_zero=True)
        self.alpha, self.beta, self.w0 = alpha, beta, None

    def reset(self): self.w0 = None

    def __getstate__(self):
        "Exported without `w0`: the reference copy would double the file; a later fit records it again."
        return {**self.__dict__, 'w0': None}

    def record_start(self, model: nn.Module | None = None):
        "Record the starting weights `w0` (the pretrained values) now."
        model = unwrap_ddp(model if model is not None else self.learn.model)
        head = _head_ids(model)
        self.w0 = {n: p.detach().clone() for n, p in model.named_parameters() if id(p) not in head}
        self.head_names = {n for n, p in model.named_parameters() if id(p) in head}

    def before_train(self):
        if self.w0 is None: self.record_start()

    def penalty(self, model: nn.Module | None = None) -> torch.Tensor:
        "The current penalty (differentiable), over parameters that require grad."
        if self.w0 is None:
            raise CnnTricksError("L2SP has no recorded start: it records w0 when training starts, or call record_start()")
        model = unwrap_ddp(model if model is not None else self.learn.model)
        ws, w0s, hs = [], [], []
        for n, p in model.named_parameters():
            if not p.requires_grad: continue
            if n in self.head_names: hs.append(p)
            elif n in self.w0: ws.append(p); w0s.append(self.w0[n])
            else: raise CnnTricksError(f"L2SP's recorded start has no parameter {n!r}: the model changed; call reset()")
        pen = torch.zeros((), device=ws[0].device if ws else hs[0].device if hs else 'cpu')
        if ws and self.alpha:
            diffs = torch._foreach_sub(ws, w0s)
            pen = pen + self.alpha / 2 * torch.stack(torch._foreach_norm(diffs)).pow(2).sum()
        if hs and self.beta: pen = pen + self.beta / 2 * torch.stack(torch._foreach_norm(hs)).pow(2).sum()
        return pen

    def after_loss(self):
        if not self.training: return
        self.learn.loss_grad = self.learn.loss_grad + self.penalty()


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    "Linear CKA (Kornblith et al. 2019) between feature matrices (n, d1) and (n, d2): 1 = same up to rotation and scale."
    x, y = x.double() - x.double().mean(0), y.double() - y.double().mean(0)
    num = (y.T @ x).pow(2).sum()
    den = (x.T @ x).pow(2).sum().sqrt() * (y.T @ y).pow(2).sum().sqrt()
    return float(num / den) if den > 0 else float('nan')


def body_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    "Pooled features of the body (timm's pre-logits; else the first child of a (body, head) Sequential), in eval mode."
    m = unwrap_ddp(model)
    with preserve_model(m), torch.no_grad():
        m.eval()
        if hasattr(m, 'forward_head'): f = m.forward_head(m.forward_features(x), pre_logits=True)
        elif isinstance(m, nn.Sequential) and len(m) == 2: f = m[0](x)
        else: raise CnnTricksError(f"cannot take body features of {type(m).__name__}: use a timm model or Sequential(body, head)")
    return f.flatten(2).mean(-1) if f.dim() > 2 else f


class DriftMonitor(Callback):
    """Per epoch, into fastai's table: each group's relative weight drift `||w - w0|| / ||w0||`, the body's feature
    CKA on a fixed probe batch against the starting weights, and accuracy on an optional source-task DataLoader
    (through `source_head`, the old classifier kept aside) -- the measure of forgetting."""
    order = 45  # before the Recorder (50) reads metric values

    def __init__(self, probe: torch.Tensor | None = None,  # input batch for CKA (default: the first validation batch)
                 source_dl=None,  # DataLoader of the source task, for retained accuracy
                 source_head: nn.Module | None = None,  # maps body features to source logits (default: the model itself)
                 per_group: bool = True,  # one drift column per group (else only the mean)
                 cka: bool = True):
        if probe is not None:
            check_type('probe', probe, torch.Tensor, 'an input batch tensor (n, channels, h, w) or None')
            if probe.dim() != 4 or not len(probe):
                raise CnnTricksError(f"probe of shape {tuple(probe.shape)} is not valid; pass a batch (n, channels, h, w)")
        if source_head is not None: check_type('source_head', source_head, nn.Module, 'an nn.Module or None')
        check_bool('per_group', per_group); check_bool('cka', cka)
        self.probe, self.source_dl, self.source_head, self.per_group, self.cka = probe, source_dl, source_head, per_group, cka
        self.w0, self.history, self._values, self._in_fit = None, [], {}, False
        self._default_probe = probe is None

    def __getstate__(self):
        "Exported without its reference copies (weights, features, probe batch): a later fit records them again."
        return {**self.__dict__, 'w0': None, 'f0': None, 'probe': None if self._default_probe else self.probe,
                '_values': {}}

    def _check_probe(self):
        want = _in_channels(self.learn.model)
        if want is not None and self.probe.shape[1] != want:
            raise CnnTricksError(f"probe has {self.probe.shape[1]} channels but the model takes {want}; pass a batch "
                                 f"(n, {want}, h, w) or leave probe=None for the first validation batch")

    def _record_start(self):
        groups = self.learn.opt.param_lists if self.learn.opt is not None else self.learn.splitter(self.learn.model)
        self.w0 = [[p.detach().clone() for p in g] for g in groups]
        if self.cka:
            if self.probe is None: self.probe = self.learn.dls.valid.one_batch()[0]
            self._check_probe()
            self.f0 = body_features(self.learn.model, self.probe)

    def before_fit(self):
        if any(isinstance(cb, GatherPredsCallback) for cb in self.learn.cbs): return  # get_preds/predict: no training
        if self.learn.opt is None: self.learn.create_opt()
        if self.w0 is None: self._record_start()
        self._values, self._in_fit = {}, True
        n = len(self.w0)
        names = [f'drift_g{i}' for i in range(n)] if self.per_group else ['drift']
        if self.cka: names.append('feat_cka')
        if self.source_dl is not None: names.append('source_acc')
        self._mets = [ValueMetric(_Getter(self, k), k) for k in names]
        self.learn.metrics = [m for m in self.learn.metrics if not isinstance(m, ValueMetric) or
                              not isinstance(m.func, _Getter)] + self._mets

    def measure(self) -> dict:
        "Drift values now."
        out = {}
        with torch.no_grad():
            drifts = []
            for g, g0 in zip(self.learn.opt.param_lists, self.w0):
                if not len(g): drifts.append(0.); continue
                num = torch.stack(torch._foreach_norm(torch._foreach_sub([p.detach() for p in g], g0))).pow(2).sum().sqrt()
                den = torch.stack(torch._foreach_norm(g0)).pow(2).sum().sqrt()
                drifts.append(float(num / den) if den > 0 else 0.)
        if self.per_group: out.update({f'drift_g{i}': d for i, d in enumerate(drifts)})
        else: out['drift'] = sum(drifts) / len(drifts)
        if self.cka: out['feat_cka'] = linear_cka(self.f0, body_features(self.learn.model, self.probe))
        if self.source_dl is not None: out['source_acc'] = self.source_accuracy()
        return out

    def source_accuracy(self) -> float:
        "Accuracy on the source task through `source_head` (or the model) with the current body."
        m = unwrap_ddp(self.learn.model)
        correct = total = 0
        for xb, yb in self.source_dl:
            if self.source_head is not None:
                with torch.no_grad(): logits = self.source_head.to(xb.device).eval()(body_features(m, xb))
            else:
                with preserve_model(m), torch.no_grad(): m.eval(); logits = m(xb)
            correct += (logits.argmax(-1) == yb).sum().item(); total += len(yb)
        return correct / max(total, 1)

    def after_validate(self):
        if not self._in_fit: return  # get_preds/predict (e.g. after load_learner) are not training epochs
        self._values = self.measure()
        self.history.append(self._values)

    def after_fit(self):
        if not self._in_fit: return
        self._in_fit = False
        self.learn.metrics = [m for m in self.learn.metrics if m not in self._mets]


def _in_channels(model):
    "Input channels of the model's first convolution (None if it has none)."
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return None if conv is None else conv.in_channels


class _Getter:
    "Picklable accessor of one DriftMonitor value (ValueMetric needs a callable)."
    def __init__(self, cb, key): self.cb, self.key = cb, key
    def __call__(self): return self.cb._values.get(self.key, float('nan'))
