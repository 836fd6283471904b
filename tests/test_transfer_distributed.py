"GradualUnfreeze under DDP: 2 CPU processes over gloo end with identical parameters and no DDP error."
import os
import socket
import sys

import pytest
import torch
import torch.multiprocessing as mp

WORKER = r'''
import os, sys, torch
from torch import nn
import numpy as np
from fastai.vision.all import Learner, DataLoaders, TfmdDL, set_seed, CrossEntropyLossFlat
from fastai.data.core import TfmdLists
from fastai_cnntricks.transfer import GradualUnfreeze, NormPolicy
from fastai_cnntricks.transfer.distributed import transfer_distrib_ctx

out = sys.argv[1]
torch.set_num_threads(1)
set_seed(0)
g = torch.Generator().manual_seed(0)
x, y = torch.randn(64, 3, 8, 8, generator=g), torch.randint(0, 3, (64,), generator=g)
items = list(zip(x, y))
dls = DataLoaders(TfmdDL(items, bs=8, shuffle=True, drop_last=True), TfmdDL(items[:16], bs=8), device='cpu')
torch.manual_seed(0)  # the same initial weights on every rank
body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                     nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()),
                     nn.AdaptiveAvgPool2d(1), nn.Flatten())
model = nn.Sequential(body, nn.Linear(8, 3))
from fastai_cnntricks.transfer.groups import timm_splitter
learn = Learner(dls, model, loss_func=CrossEntropyLossFlat(), splitter=timm_splitter)
learn.freeze()
with learn.transfer_distrib_ctx():
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(3, 1e-2, cbs=GradualUnfreeze(every=0.5, warmup=0.5, norm=NormPolicy(stats='update')))
torch.save({k: v.detach().clone() for k, v in learn.model.state_dict().items()}, out)
'''


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


@pytest.mark.timeout(240)
def test_gradual_unfreeze_ddp_gloo_two_ranks(tmp_path):
    script = tmp_path / 'worker.py'
    script.write_text(WORKER)
    port = _free_port()
    import subprocess
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE='2', LOCAL_WORLD_SIZE='2',
                   MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), OMP_NUM_THREADS='1', CUDA_VISIBLE_DEVICES='')
        procs.append(subprocess.Popen([sys.executable, str(script), str(tmp_path / f'rank{rank}.pt')], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=220)[0] for p in procs]
    for p, o in zip(procs, outs):
        assert p.returncode == 0, o[-3000:]
        # DDP's error about parameters that got no grad / changed (its find_unused_parameters=True hint is only a warning)
        assert 'Expected to have finished reduction' not in o and 'RuntimeError' not in o, o[-3000:]
    sd0, sd1 = (torch.load(tmp_path / f'rank{r}.pt', weights_only=True) for r in range(2))
    assert sd0.keys() == sd1.keys()
    for k in sd0:
        assert torch.equal(sd0[k], sd1[k]), f'{k} differs between ranks'
    # and training really changed the lowest group (thawed last), so the check is not vacuous
    torch.manual_seed(0)
    from torch import nn
    first = nn.Conv2d(3, 8, 3, padding=1)
    assert not torch.allclose(first.weight, sd0['0.0.weight'])
