"""Benchmark Grad-CAM against its anchors, side by side in one run on the same images: one forward plus one backward
pass of the same batch, and captum's LayerGradCam (+ LayerAttribution.interpolate) at the same layer; per image and
per batch. Also the cost of the sanity check (attribution_sanity, cascading randomization).

    .venv/bin/python bench/attribution.py [--quick] [--device cpu|cuda] [--archs resnet18,tf_efficientnet_lite0]
"""
from __future__ import annotations
import argparse, os, sys, time
from pathlib import Path

import torch
import timm
from fastai.vision.all import Learner, CrossEntropyLossFlat

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fastai_cnntricks.data import digits_dls
from fastai_cnntricks.interpret import grad_cam_maps, attribution_sanity
from machine import results_table  # noqa: E402


def sync(dev):
    if dev.type == 'cuda': torch.cuda.synchronize()


def timed(fn, dev, repeat=3):
    "Best wall time of `repeat` runs (seconds)."
    best = float('inf')
    for _ in range(repeat):
        sync(dev); t = time.perf_counter(); fn(); sync(dev)
        best = min(best, time.perf_counter() - t)
    return best


def forward_backward(model, x, targets):
    "One training-style forward and backward pass (every parameter's grad) of the target logits."
    model.zero_grad(set_to_none=True)
    model(x).gather(1, targets[:, None]).sum().backward()


def feature_module(model, x):
    "The module whose output is the final feature map (what grad_cam picks), for captum."
    with torch.no_grad(): feats = model.forward_features(x[:1])
    found = []

    def same(name):
        return lambda m, i, o: found.append(name) if isinstance(o, torch.Tensor) and o.shape == feats.shape \
            and torch.equal(o, feats) else None
    hooks = [m.register_forward_hook(same(n)) for n, m in model.named_modules() if n]
    try:
        with torch.no_grad(): model(x[:1])
    finally:
        for h in hooks: h.remove()
    return model.get_submodule(found[-1])


def captum_grad_cam(model, layer, x, targets):
    from captum.attr import LayerGradCam, LayerAttribution
    a = LayerGradCam(model, layer).attribute(x, target=targets, relu_attributions=True)
    return LayerAttribution.interpolate(a, tuple(x.shape[-2:]), interpolate_mode='bilinear')


def per_image(fn, x, targets):
    return lambda: [fn(x[i:i + 1], targets[i:i + 1]) for i in range(len(x))]


def bench_grad_cam(arch, size, bs, dev, rows, repeat):
    kw = dict(zero_init_last=False) if arch.startswith('resnet') else {}  # live residual branches, as when trained
    model = timm.create_model(arch, pretrained=False, num_classes=1000, **kw).eval().to(dev)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(bs, 3, size, size, generator=g).to(dev)
    targets = torch.randint(0, 1000, (bs,), generator=g).to(dev)
    layer = feature_module(model, x)
    ours = lambda xb, tb: grad_cam_maps(model, xb, tb)
    theirs = lambda xb, tb: captum_grad_cam(model, layer, xb, tb)
    fb = lambda xb, tb: forward_backward(model, xb, tb)
    torch.testing.assert_close(ours(x[:2], targets[:2]), theirs(x[:2], targets[:2])[:, 0].cpu(), rtol=1e-4, atol=1e-6)
    n = min(bs, 16)  # per-image rows: the first 16 images, one call each
    for case, k, wrap in ((f'batch of {bs}', bs, lambda f: lambda: f(x, targets)),
                          (f'per image (x{n})', n, lambda f: per_image(f, x[:n], targets[:n]))):
        t_fb, t_ours, t_captum = (timed(wrap(f), dev, repeat) for f in (fb, ours, theirs))
        t_ours = min(t_ours, timed(wrap(ours), dev, repeat))  # timed again after the others: keep its best
        name = f'{arch} {size} px, {case}'
        rows.append(f'| Grad-CAM {name} | fwd+bwd {t_fb / k * 1e3:.1f} ms/img | captum {t_captum / k * 1e3:.1f} '
                    f'ms/img | {t_ours / k * 1e3:.1f} ms/img | {t_ours / t_fb:.2f}x fwd+bwd, '
                    f'{t_ours / t_captum:.2f}x captum | layer {layer_name(model, layer)} |')
        print(rows[-1], flush=True)
    model.zero_grad(set_to_none=True)


def layer_name(model, layer):
    return next(n for n, m in model.named_modules() if m is layer)


def bench_sanity(arch, size, n, dev, rows):
    dls = digits_dls(size=size, bs=n, n_per_class=2)
    model = timm.create_model(arch, pretrained=False, num_classes=10).to(dev)
    learn = Learner(dls, model, loss_func=CrossEntropyLossFlat())
    x = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0)).to(dev)
    t_one = timed(lambda: grad_cam_maps(model, x), dev, 1)
    t = time.perf_counter()
    table, _ = attribution_sanity(learn, 'gradcam', x, data_randomization=True, show=False)
    t = time.perf_counter() - t
    rows.append(f'| attribution_sanity {arch} {size} px, {n} images, Grad-CAM | one Grad-CAM batch {t_one:.2f} s | '
                f'- | {t:.2f} s | {t / t_one:.1f}x one batch | {len(table) - 1} randomization steps + head refit '
                'on shuffled labels |')
    print(rows[-1], flush=True)


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--archs', default='resnet18,tf_efficientnet_lite0')
    ap.add_argument('--sizes', default='128,224')
    ap.add_argument('--bs', type=int, default=64)
    ap.add_argument('--quick', action='store_true', help='one small size, small batches, one repeat')
    ap.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    ap.add_argument('--out', default=str(Path(__file__).parent / 'results' / 'attribution.md'))
    return ap.parse_args()


def main():
    a = parse_args()
    dev = torch.device(a.device)
    sizes = [64] if a.quick else [int(s) for s in a.sizes.split(',')]
    bs, repeat = (4, 1) if a.quick else (a.bs, 3)
    cmd = 'python bench/attribution.py ' + ' '.join(sys.argv[1:])
    load0 = ', '.join(f'{v:.1f}' for v in os.getloadavg())
    rows, t0 = [], time.time()

    def write():
        return results_table(
            f"Attribution benchmark ({'quick' if a.quick else 'full'})", cmd, t0, dev,
            f"Random weights (timing does not depend on them), random targets; load average at the start: {load0}. "
            "fwd+bwd = one forward and one backward pass of the same images (all parameter grads); captum = "
            "LayerGradCam + LayerAttribution.interpolate (bilinear) at the same layer; best of "
            f"{repeat} each, back to back in one process.", rows, a.out)
    archs = [s for s in a.archs.split(',') if s]
    for arch in archs:
        for size in sizes:
            bench_grad_cam(arch, size, bs, dev, rows, repeat); write()
    for arch in archs:
        bench_sanity(arch, sizes[0], 4 if a.quick else 16, dev, rows); write()
    print(write())


if __name__ == '__main__':
    main()
