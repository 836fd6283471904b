"""Freezing schedules under DDP (fastai's `distrib_ctx` over Accelerate), on GPUs (nccl) and on CPUs (gloo).

DDP registers only the parameters that require grad when it wraps the model, so everything must require grad at the
wrap (our schedules freeze afterwards, at `before_train`); a frozen-but-registered parameter then needs
`find_unused_parameters=True`. fastai's `DistributedDL._broadcast` moves indices to CUDA, which fails on a gloo/CPU
group. `transfer_distrib_ctx` handles all three. Launch a script that uses it with

    torchrun --nproc_per_node 2 train.py          # or: accelerate launch --num_processes 2 [--cpu] train.py

where train.py does `with learn.transfer_distrib_ctx(): learn.fine_tune_gradual(5)`."""
from __future__ import annotations
from contextlib import contextmanager

import torch
from fastai.callback.core import Callback
from fastai.learner import Learner
from fastcore.basics import patch

from ..core import CnnTricksError, check_bool

__all__ = ['patch_distributed_broadcast', 'RegisterAllParams', 'transfer_distrib_ctx']


def _broadcast(self, t, rank):
    "Broadcast the index list `t` from `rank` on the device the process group's backend needs (CUDA for nccl only)."
    import torch.distributed as dist
    dev = 'cuda' if dist.get_backend() == 'nccl' else 'cpu'
    t = torch.LongTensor(t).to(dev)
    dist.broadcast(t, rank)
    return t.cpu().tolist()


def patch_distributed_broadcast():
    "Make fastai's `DistributedDL` work on gloo (CPU) process groups too; idempotent. Returns fastai's own method."
    from fastai.distributed import DistributedDL
    orig = DistributedDL.__dict__['_broadcast']
    DistributedDL._broadcast = _broadcast
    return orig


class RegisterAllParams(Callback):
    """Before `DistributedTrainer` (order 11) wraps the model in DDP: every parameter requires grad, so DDP registers
    all of them; `RestoreFlags` (order 12) puts the user's frozen set back right after the wrap."""
    order = 10

    def before_fit(self):
        self.flags = [p.requires_grad for p in self.learn.model.parameters()]
        for p in self.learn.model.parameters(): p.requires_grad_(True)


class RestoreFlags(Callback):
    "Right after the DDP wrap: restore the `requires_grad` flags `RegisterAllParams` saved."
    order = 12

    def __init__(self, saver: RegisterAllParams): self.saver = saver

    def before_fit(self):
        flags = getattr(self.saver, 'flags', None)
        if flags is None: return
        for p, f in zip(self.learn.model.parameters(), flags): p.requires_grad_(f)
        self.saver.flags = None


@patch
@contextmanager
def transfer_distrib_ctx(self: Learner,
                         sync_bn: bool | None = None,  # SyncBatchNorm (default: on CUDA only; gloo/CPU cannot)
                         find_unused_parameters: bool = True,  # needed once a registered parameter is frozen
                         **kwargs):  # more Accelerator arguments
    "fastai's `distrib_ctx`, made safe for freezing schedules and for CPU (gloo) process groups."
    if sync_bn is not None: check_bool('sync_bn', sync_bn)
    check_bool('find_unused_parameters', find_unused_parameters)
    try: from accelerate import DistributedDataParallelKwargs
    except ImportError as e:
        raise CnnTricksError("transfer_distrib_ctx needs Accelerate: pip install 'fastai_cnntricks[distributed]' "
                             "(or: pip install accelerate)") from e
    from fastai.distributed import DistributedDL
    fastai_broadcast = patch_distributed_broadcast()
    cuda = torch.cuda.is_available()
    if sync_bn is None: sync_bn = cuda
    if not cuda: kwargs.setdefault('cpu', True)
    handlers = list(kwargs.pop('kwargs_handlers', []) or [])
    handlers.append(DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters))
    saver = RegisterAllParams()
    cbs = [saver, RestoreFlags(saver)]
    self.add_cbs(cbs)
    try:
        with self.distrib_ctx(sync_bn=sync_bn, kwargs_handlers=handlers, **kwargs): yield self
    finally:
        self.remove_cbs(cbs)
        DistributedDL._broadcast = fastai_broadcast  # leave fastai as found
