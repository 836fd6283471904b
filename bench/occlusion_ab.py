"""Interleaved A/B of occlusion_map's speed-ups on resnet18 (224 px, 729 windows, batch 4): the defaults, without
BatchNorm folding, and without incremental inference (the stem, layer1 and layer2 computed only around each window),
timed round-robin so the VM's drift hits all alike.

    .venv/bin/python bench/occlusion_ab.py [--rounds 3]

Prints each round's seconds and each configuration's best; writes nothing."""
import argparse
import time
import warnings

import timm
import torch

from fastai_cnntricks.interpret import occlusion_attribution

warnings.filterwarnings('ignore')


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--rounds', type=int, default=3)
    a = ap.parse_args()
    model = timm.create_model('resnet18', pretrained=False, zero_init_last=False).eval()  # live residual branches
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    cfgs = {'defaults': {}, 'fold_bn=False': dict(fold_bn=False), 'incremental=False': dict(incremental=False)}
    res = {k: [] for k in cfgs}
    for r in range(a.rounds):
        for k, kw in cfgs.items():
            t = time.perf_counter()
            occlusion_attribution(model, x, 1, 16, 8, 0., 'prob', 4, progress=False, **kw)
            res[k].append(time.perf_counter() - t)
        print(r, {k: round(v[-1], 2) for k, v in res.items()}, flush=True)
    print('best:', {k: round(min(v), 2) for k, v in res.items()})


if __name__ == '__main__':
    main()
