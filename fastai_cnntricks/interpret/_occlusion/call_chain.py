"""The start of a model's forward pass as a chain of modules, read from one traced call: the first module gets the
model's input, and each next one gets exactly the previous one's output, with no operation in between (in place or
not). A module whose children form such a chain from its input to its output is split into them; any other module
(a residual block, say) stays whole. Incremental occlusion runs the chain's modules on crops."""
from __future__ import annotations

import torch
from torch import nn

__all__ = ['forward_chain']


class _Call:
    "One module call of a traced forward pass: its single tensor input and output, their versions, nested calls."
    def __init__(self, module, args, kwargs):
        self.module, self.children, self.out, self.out_ver = module, [], None, None
        self.inp = args[0] if len(args) == 1 and not kwargs and isinstance(args[0], torch.Tensor) else None
        self.inp_ver = self.inp._version if self.inp is not None else None  # in-place edits bump the version


def _trace(model, x):
    top = _Call(None, (x,), {})
    stack, calls = [top], []

    def pre(m, args, kwargs):
        c = _Call(m, args, kwargs)
        stack[-1].children.append(c); stack.append(c); calls.append(c)

    def post(m, args, kwargs, out):
        c = stack.pop()
        if isinstance(out, torch.Tensor): c.out, c.out_ver = out, out._version
    hooks = [h for m in model.modules() for h in (m.register_forward_pre_hook(pre, with_kwargs=True),
                                                     m.register_forward_hook(post, with_kwargs=True))]
    try:
        with torch.no_grad(): out = model(x)
    finally:
        for h in hooks: h.remove()
    top.out, top.out_ver = (out, out._version) if isinstance(out, torch.Tensor) else (None, None)
    return top, calls


def _links(call):
    "The longest run of `call`'s nested calls chaining from its input; and whether the run ends at its output."
    run, t, v = [], call.inp, call.inp_ver
    for c in call.children:
        if t is None or c.inp is not t or c.inp_ver != v: return run, False
        run.append(c); t, v = c.out, c.out_ver
    return run, bool(run) and t is call.out and v == call.out_ver


def _flatten(call):
    run, whole = _links(call)
    return [u for c in run for u in _flatten(c)] if whole else [call]


def forward_chain(model: nn.Module, x: torch.Tensor) -> list[tuple[str, nn.Module]]:
    """(name, module) of the modules the forward pass of `model` on `x` starts with, in order, each fed exactly the
    previous one's output (the first: `x` itself), as finely split as the model's structure allows. Modules called
    more than once, or registered under another name too, end the chain."""
    top, calls = _trace(model, x)
    run, _ = _links(top.children[0]) if top.children else ([], False)  # the model's own call: a prefix will do
    units = [u for c in run for u in _flatten(c)]
    n_calls, names = {}, {}
    for c in calls: n_calls[c.module] = n_calls.get(c.module, 0) + 1
    for n, m in model.named_modules(remove_duplicate=False): names.setdefault(m, []).append(n)
    chain = []
    for u in units:
        if u.module is model or n_calls[u.module] != 1 or len(names.get(u.module, [])) != 1: break
        chain.append((names[u.module][0], u.module))
    return chain
