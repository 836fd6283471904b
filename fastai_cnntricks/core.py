"Shared plumbing: layer lookup by name, leaving a model as found, normalization stats, clear errors."
from __future__ import annotations
import difflib, math, numbers
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

__all__ = ['CnnTricksError', 'get_layer', 'layer_name', 'model_snapshot', 'preserve_model', 'norm_stats',
           'model_device', 'unwrap_ddp', 'fit_logistic_head', 'mean_se', 'check_choice', 'check_bool', 'check_number', 'check_positive', 'check_int',
           'check_count', 'check_fraction', 'check_range', 'check_seed', 'check_type']


class CnnTricksError(ValueError):
    "An error the user can fix: the message says what was wrong and what is valid."


# ---- The one set of argument validators every module uses. Each returns the cleaned value and raises a
# CnnTricksError naming the argument, the value and what is valid. Booleans are never numbers here
# (`True` is an int to Python, but `size=True` is a mistake), nor are NaN and inf unless asked for.

def _fail(name, value, valid):
    raise CnnTricksError(f"{name}={value!r} is not valid; {valid}")


def _is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def check_choice(name, value, valid):
    "Raise if `value` is not one of `valid`, naming the argument `name`."
    try: ok = value in valid
    except TypeError: ok = False  # unhashable values against a set
    if not ok: _fail(name, value, f"choose one of {', '.join(map(repr, valid))}")
    return value


def check_bool(name, value):
    "Raise unless `value` is True or False."
    if not isinstance(value, (bool, np.bool_)): _fail(name, value, "use True or False")
    return bool(value)


def _num_text(v):
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def _bounds_text(lo, hi, lo_open, hi_open):
    parts = []
    if lo is not None: parts.append(f"{'>' if lo_open else '>='} {_num_text(lo)}")
    if hi is not None: parts.append(f"{'<' if hi_open else '<='} {_num_text(hi)}")
    return ' and '.join(parts)


def check_number(name, value, lo=None, hi=None, lo_open=False, hi_open=False, allow_none=False, allow_inf=False):
    "A finite real number (not a bool) within [`lo`, `hi`] (open ends with `lo_open`/`hi_open`); returns a float."
    if value is None and allow_none: return None
    bounds = _bounds_text(lo, hi, lo_open, hi_open)
    what = f"it must be a {'' if allow_inf else 'finite '}number" + (f" {bounds}" if bounds else '')
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.dtype.is_complex and value.dtype != torch.bool:
        value = value.item()
    if not _is_number(value) or math.isnan(value) or (math.isinf(value) and not allow_inf): _fail(name, value, what)
    v = float(value)
    if lo is not None and (v <= lo if lo_open else v < lo): _fail(name, value, what)
    if hi is not None and (v >= hi if hi_open else v > hi): _fail(name, value, what)
    return v


def check_positive(name, value, allow_zero=False):
    "A finite number > 0 (>= 0 with `allow_zero`); returned as given (an int stays an int)."
    check_number(name, value, lo=0, lo_open=not allow_zero)
    return value.item() if isinstance(value, (torch.Tensor, np.generic)) else value


def check_int(name, value, lo=None, hi=None, allow_none=False):
    "A whole number (an int or numpy integer, not a bool or a float such as 2.5) within [`lo`, `hi`]; returns an int."
    if value is None and allow_none: return None
    bounds = _bounds_text(lo, hi, False, False)
    what = "it must be a whole number (int)" + (f" {bounds}" if bounds else '')
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Integral, torch.Tensor)): _fail(name, value, what)
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.dtype.is_floating_point or value.dtype == torch.bool: _fail(name, value, what)
        value = value.item()
    v = int(value)
    if (lo is not None and v < lo) or (hi is not None and v > hi): _fail(name, value, what)
    return v


def check_count(name, value, allow_zero=False, allow_none=False):
    "A count: a whole number >= 1 (>= 0 with `allow_zero`)."
    return check_int(name, value, lo=0 if allow_zero else 1, allow_none=allow_none)


def check_fraction(name, value, allow_zero=True, allow_one=False):
    "A fraction in [0, 1) by default (validation splits, probabilities of leaving items out)."
    return check_number(name, value, lo=0, hi=1, lo_open=not allow_zero, hi_open=not allow_one)


def check_range(name, value, lo=None, hi=None):
    "A (low, high) pair of finite numbers with low <= high, each within [`lo`, `hi`]; returns a tuple of floats."
    bounds = _bounds_text(lo, hi, False, False)
    what = "it must be a pair (low, high) of finite numbers with low <= high" + (f", each {bounds}" if bounds else '')
    if not isinstance(value, (list, tuple)) or len(value) != 2: _fail(name, value, what)
    try: a, b = (check_number(name, v, lo=lo, hi=hi) for v in value)
    except CnnTricksError: _fail(name, value, what)
    if a > b: _fail(name, value, what)
    return a, b


def check_seed(name, value, allow_none=True):
    "A random seed: a whole number in [0, 2**32 - 1] (what numpy accepts), or None."
    return check_int(name, value, lo=0, hi=2**32 - 1, allow_none=allow_none)


def check_type(name, value, types, what):
    "Raise unless `value` is an instance of `types`; `what` says what is valid (e.g. 'a fastai DataLoader')."
    if not isinstance(value, types): raise CnnTricksError(f"{name}={_short(value)} is not valid; pass {what}")
    return value


def _short(value):
    r = repr(value)
    return r if len(r) <= 80 else f"<{type(value).__name__}>"


def unwrap_ddp(model: nn.Module) -> nn.Module:
    "The model inside a DDP/Accelerate wrapper (the model itself when it is not wrapped)."
    return getattr(model, 'module', model)


def get_layer(model: nn.Module, layer) -> nn.Module:
    "The module of `model` named `layer` (a dotted `named_modules` name, or a module of the model)."
    if isinstance(layer, nn.Module):
        if not any(m is layer for m in model.modules()):
            raise CnnTricksError(f"layer {type(layer).__name__} is not a module of this model")
        return layer
    if not isinstance(layer, str):
        raise CnnTricksError(f"layer={layer!r} is not valid; pass a dotted module name (see learn.layer_names()) "
                             "or a module of the model")
    modules = dict(model.named_modules())
    if layer in modules and layer != '': return modules[layer]
    # Names relative to a wrapped backbone (e.g. fastai's Sequential(TimmBody, head) -> '0.model.<name>').
    for prefix in ('model.', '0.model.', '0.', 'backbone.', 'body.'):
        if prefix + layer in modules: return modules[prefix + layer]
    names = [n for n in modules if n]
    close = difflib.get_close_matches(layer, names, n=5, cutoff=0.4)
    if not close: close = [n for n in names if layer.split('.')[-1] in n][:5] or names[:5]
    raise CnnTricksError(f"no layer named {layer!r} in {type(model).__name__}; closest names: {', '.join(close)}")


def layer_name(model: nn.Module, module: nn.Module) -> str:
    "The dotted name of `module` inside `model`."
    for n, m in model.named_modules():
        if m is module: return n
    raise CnnTricksError(f"{type(module).__name__} is not a module of this model")


def _hook_counts(model):
    return [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks),
             len(getattr(m, '_backward_pre_hooks', {}))) for m in model.modules()]


def model_snapshot(model: nn.Module) -> dict:
    "Everything interpretation code promises to leave alone: modes, grad flags, hook counts, memory format."
    params = list(model.parameters())
    return dict(training=[m.training for m in model.modules()],
                requires_grad=[p.requires_grad for p in params],
                hooks=_hook_counts(model),
                channels_last=[p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last)
                               and not p.is_contiguous() for p in params])


@contextmanager
def preserve_model(model: nn.Module):
    """Run the body and put `model` back as found: train/eval mode per module, `requires_grad` flags,
    no hooks left, parameter grads untouched -- also when the body raises."""
    modules, params = list(model.modules()), list(model.parameters())
    training = [m.training for m in modules]
    flags = [p.requires_grad for p in params]
    grads = [p.grad for p in params]
    hooks = [(dict(m._forward_hooks), dict(m._forward_pre_hooks), dict(m._backward_hooks)) for m in modules]
    try: yield model
    finally:
        for m, t in zip(modules, training): m.training = t
        for p, f, g in zip(params, flags, grads): p.requires_grad_(f); p.grad = g
        for m, (fh, fph, bh) in zip(modules, hooks):
            for store, keep in ((m._forward_hooks, fh), (m._forward_pre_hooks, fph), (m._backward_hooks, bh)):
                for k in [k for k in store if k not in keep]: del store[k]


def model_device(model: nn.Module) -> torch.device:
    "The device of the model's first parameter (CPU for a model without parameters)."
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device('cpu')


def norm_stats(learn_or_dls=None, model=None):
    """(mean, std) the model expects, as 3-tuples: from a `Normalize` in the DataLoaders' batch transforms,
    else timm's `pretrained_cfg`, else `None` (inputs are used as they are)."""
    dls = getattr(learn_or_dls, 'dls', learn_or_dls)
    model = model if model is not None else getattr(learn_or_dls, 'model', None)
    for t in getattr(getattr(dls, 'after_batch', None), 'fs', []) or []:
        if type(t).__name__ == 'Normalize' and getattr(t, 'mean', None) is not None:
            return tuple(t.mean.flatten().tolist()), tuple(t.std.flatten().tolist())
    if model is not None:
        for m in model.modules():
            cfg = getattr(m, 'pretrained_cfg', None)
            if cfg and 'mean' in cfg: return tuple(cfg['mean']), tuple(cfg['std'])
    return None


def fit_logistic_head(head: nn.Linear, x: torch.Tensor, y: torch.Tensor, wd: float | None = None,
                      max_iter: int = 100) -> nn.Linear:
    """Load into `head` a multinomial logistic regression fitted on features `x` (N, in_features) and labels `y`
    (L-BFGS, to convergence). L2 `wd` on the weights (None: 1/N, scikit-learn's C = 1); a head without bias keeps none."""
    import torch.nn.functional as F
    x = x.as_subclass(torch.Tensor).float().cpu()  # plain tensors: fastai's tensor subclasses' dispatch gets in the way
    y = y.as_subclass(torch.Tensor).long().cpu()
    w = torch.zeros(head.out_features, x.shape[1], requires_grad=True)
    b = torch.zeros(head.out_features, requires_grad=head.bias is not None)
    params = [w, b] if head.bias is not None else [w]
    opt = torch.optim.LBFGS(params, max_iter=max_iter, line_search_fn='strong_wolfe')
    if wd is None: wd = 1. / len(y)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w.T + b, y) + wd / 2 * w.pow(2).sum()
        loss.backward()
        return loss
    with torch.enable_grad(): opt.step(closure)
    with torch.no_grad():
        head.weight.copy_(w.detach().to(head.weight))
        if head.bias is not None: head.bias.copy_(b.detach().to(head.bias))
    return head


def mean_se(values) -> tuple[float, float]:
    "Mean and standard error of the mean (NaN for a single value)."
    v = torch.as_tensor(values, dtype=torch.float64)
    return float(v.mean()), float(v.std() / math.sqrt(len(v))) if len(v) > 1 else float('nan')
