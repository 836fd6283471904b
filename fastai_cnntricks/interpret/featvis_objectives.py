"""Feature visualization, idea 3 of 4: objectives -- what to maximize. Each objective maps the captured
activations to one value per image in the batch (so several units are optimized together in one batch);
objectives compose with +, - and * by a number, as in Lucid/Lucent. A new objective is one small function, added
to the `objectives` namespace at the end (a namespace, so that `logit` never hides fastai's `logit` in a star
import)."""
from __future__ import annotations
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from ..core import CnnTricksError

__all__ = ['Objective', 'objectives', 'OUTPUT']

OUTPUT = '<output>'  # the key under which the model's output is passed to objectives


def _per_image(units, b, device):
    "A unit index per image: a single int for all, or one per image."
    u = torch.as_tensor(units, device=device).long().reshape(-1)
    if len(u) == 1: return u.expand(b)
    if len(u) != b: raise CnnTricksError(f"{len(u)} units given for a batch of {b} images")
    return u


class Objective:
    "`fn(acts) -> (B,)` values to maximize; `layers`: the layer names (or OUTPUT) whose activations it reads."
    def __init__(self, fn, layers=(), name='objective'): self.fn, self.layers, self.name = fn, tuple(layers), name
    def __call__(self, acts): return self.fn(acts)
    def _join(self, other, op, sym):
        if isinstance(other, (int, float)):
            return Objective(lambda a: op(self(a), other), self.layers, f'({self.name} {sym} {other})')
        if not isinstance(other, Objective): return NotImplemented
        return Objective(lambda a: op(self(a), other(a)), dict.fromkeys(self.layers + other.layers),
                         f'({self.name} {sym} {other.name})')
    def __add__(self, o): return self._join(o, lambda a, b: a + b, '+')
    def __radd__(self, o): return self if o == 0 else self._join(o, lambda a, b: b + a, '+')
    def __sub__(self, o): return self._join(o, lambda a, b: a - b, '-')
    def __mul__(self, o):
        if not isinstance(o, (int, float)): raise CnnTricksError("objectives can be multiplied by numbers only")
        return Objective(lambda a: self(a) * o, self.layers, f'{o} * {self.name}')
    __rmul__ = __mul__
    def __neg__(self): return self * -1
    def __repr__(self): return f'Objective({self.name})'


def channel(layer: str, units) -> Objective:
    "Mean activation of channel `units` (an int, or one per image) of `layer`."
    def fn(acts):
        a = acts[layer]
        return a[torch.arange(len(a), device=a.device), _per_image(units, len(a), a.device)].mean((1, 2))
    return Objective(fn, [layer], f'channel({layer}, {units})')


def neuron(layer: str, units, x: int | None = None, y: int | None = None) -> Objective:
    "Activation of channel `units` of `layer` at one spatial position (default: the centre)."
    def fn(acts):
        a = acts[layer]
        yy = a.shape[2] // 2 if y is None else y
        xx = a.shape[3] // 2 if x is None else x
        return a[torch.arange(len(a), device=a.device), _per_image(units, len(a), a.device), yy, xx]
    return Objective(fn, [layer], f'neuron({layer}, {units}, x={x}, y={y})')


def logit(units) -> Objective:
    "The model's output (class logit) `units`."
    def fn(acts):
        a = acts[OUTPUT]
        return a[torch.arange(len(a), device=a.device), _per_image(units, len(a), a.device)]
    return Objective(fn, [OUTPUT], f'logit({units})')


def diversity(layer: str, groups=None) -> Objective:
    """Minus the mean cosine similarity of each image's Gram matrix (style) at `layer` to the others of its group
    (Lucid's diversity): maximizing it pushes a batch showing one unit towards different facets of it."""
    def fn(acts):
        a = acts[layer]
        b = len(a)
        flat = a.reshape(b, a.shape[1], -1)
        grams = F.normalize((flat @ flat.transpose(1, 2)).reshape(b, -1), dim=1)
        sim = grams @ grams.T
        g = torch.zeros(b, device=a.device) if groups is None else torch.as_tensor(groups, device=a.device)
        same = (g[:, None] == g[None]) & ~torch.eye(b, dtype=torch.bool, device=a.device)
        return -(sim * same).sum(1) / same.sum(1).clamp_min(1)
    return Objective(fn, [layer], f'diversity({layer})')


objectives = SimpleNamespace(channel=channel, neuron=neuron, logit=logit, diversity=diversity)
