"""Augmentation throughput: the Keras-parity pipeline (rotate, shift, shear, anisotropic zoom, flip, brightness,
channel shift, Gaussian noise) on float batches, ours vs kornia.augmentation, torchvision.transforms.v2 per image,
fastai's aug_transforms alone, and the floor (one affine_grid + grid_sample of the batch plus one elementwise pass
per pixel transform). Run: `.venv/bin/python bench/augment.py [--quick] [--device cuda]`.
"""
import argparse
import datetime
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from fastai.vision.all import TensorImage, aug_transforms, Pipeline
from fastai_cnntricks.augment import keras_tfms, GaussianNoise, fuse_tfms
from machine import cpu_model  # noqa: E402

KW = dict(rotation_range=15, width_shift_range=0.1, height_shift_range=0.1, shear_range=10, zoom_range=0.15,
          horizontal_flip=True, brightness_range=(0.8, 1.2), channel_shift_range=20, fill_mode='reflect')


def ours(noise=True):
    pipe = Pipeline(fuse_tfms(keras_tfms(**KW).batch_tfms + ([GaussianNoise(0.05, p=1.)] if noise else [])),
                    split_idx=0)
    return lambda x: pipe(TensorImage(x))


def fastai_aug():
    pipe = Pipeline(aug_transforms(max_warp=0), split_idx=0)
    return lambda x: pipe(TensorImage(x))


def kornia_pipe(noise=True):
    import kornia.augmentation as K
    seq = K.AugmentationSequential(
        K.RandomAffine(degrees=15, translate=(0.1, 0.1), scale=(0.85, 1.15, 0.85, 1.15), shear=(-10, 10), p=1.,
                       padding_mode='reflection'),
        K.RandomHorizontalFlip(p=0.5),
        K.ColorJitter(brightness=0.2, p=1.),
        *([K.RandomGaussianNoise(std=0.05, p=1.)] if noise else []))
    shift = 20 / 255

    def f(x):
        y = seq(x)
        # kornia has no Keras channel shift: the same one elementwise pass for parity
        s = torch.empty(x.shape[0], 1, 1, 1, device=x.device).uniform_(-shift, shift)
        return (y + s).clamp_(0, 1)
    return f


def torchvision_pipe():
    from torchvision.transforms import v2
    t = v2.Compose([v2.RandomAffine(degrees=15, translate=(0.1, 0.1), scale=(0.85, 1.15), shear=10),
                    v2.RandomHorizontalFlip(), v2.ColorJitter(brightness=0.2),
                    v2.GaussianNoise(sigma=0.05, clip=False)])
    return lambda x: torch.stack([t(im) for im in x])


def floor():
    "One affine_grid + grid_sample (reflection) of the batch + one elementwise pass per pixel transform."
    def f(x):
        n = x.shape[0]
        theta = torch.eye(2, 3, device=x.device).expand(n, 2, 3) * 1.01
        y = F.grid_sample(x, F.affine_grid(theta, x.shape, align_corners=False), 'bilinear', 'reflection', False)
        y = y * torch.rand(n, 1, 1, 1, device=x.device)           # brightness
        y = y + torch.rand(n, 1, 1, 1, device=x.device)           # channel shift
        return y + torch.randn_like(y) * 0.05                     # noise
    return f


def timeit(f, x, reps, warm=2):
    for _ in range(warm): f(x)
    if x.is_cuda: torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter(); f(x)
        if x.is_cuda: torch.cuda.synchronize()
        ts.append(time.perf_counter() - t0)
    ts.sort()
    return ts[len(ts) // 2]  # median


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--quick', action='store_true', help='fewer repetitions')
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--bs', type=int, default=64)
    ap.add_argument('--size', type=int, default=128)
    ap.add_argument('--out', default=str(Path(__file__).parent / 'results' / 'augment.md'))
    args = ap.parse_args()
    reps = 9 if args.quick else 31
    dev = torch.device(args.device)
    torch.manual_seed(0)
    x = torch.rand(args.bs, 3, args.size, args.size, device=dev)
    contenders = [('floor (1 grid_sample + 3 elementwise passes)', floor), ('fastai_cnntricks keras_tfms + noise', ours),
                  ('kornia.augmentation (same pipeline)', kornia_pipe),
                  ('torchvision.transforms.v2, per image', torchvision_pipe),
                  ("fastai aug_transforms (flip, rotate, zoom, lighting)", fastai_aug),
                  ('without the Gaussian noise: fastai_cnntricks', lambda: ours(noise=False)),
                  ('without the Gaussian noise: kornia', lambda: kornia_pipe(noise=False)),
                  ('torch.randn_like of the batch alone (paid by every contender above)',
                   lambda: lambda x: torch.randn_like(x))]
    fs = {name: mk() for name, mk in contenders}
    times = {name: [] for name in fs}
    with torch.no_grad():
        for name, f in fs.items():  # warm-up
            for _ in range(2): f(x)
        # round robin: every repetition times each contender once, so a slow spell of the shared machine hits all
        for i in range(reps):
            for name, f in fs.items():
                if 'torchvision' in name and i % 3: continue  # per image: slow, fewer repetitions
                times[name].append(timeit(f, x, 1, warm=0))
    res = {name: args.bs / sorted(ts)[len(ts) // 2] for name, ts in times.items()}
    for name in fs: print(f"{name}: {res[name]:.0f} img/s")
    ours_ips, floor_ips = res[contenders[1][0]], res[contenders[0][0]]
    kornia_ips = res[contenders[2][0]]
    lines = [f"# Augmentation throughput ({args.bs}x3x{args.size}x{args.size} float batches, {dev.type})", '',
             f"Command: `.venv/bin/python bench/augment.py{' --quick' if args.quick else ''}"
             f"{' --device ' + args.device if args.device != 'cpu' else ''}`  ",
             f"Date: {datetime.datetime.now().isoformat(timespec='minutes')}  ",
             f"Machine: {platform.platform()}, {cpu_model()}, torch {torch.__version__}, "
             f"torch.get_num_threads()={torch.get_num_threads()} (same for every contender)"
             + (f", GPU {torch.cuda.get_device_name(dev)}" if dev.type == 'cuda' else '') + '  ',
             'Note: the 2-core virtual machine is shared; contenders are timed round-robin (each repetition times every '
             'contender once) and the median is reported; ratios within one run are what counts.', '',
             "Pipeline: rotate 15 deg, shift 0.1, shear 10 deg, zoom 0.85-1.15 (x, y independent), horizontal flip, "
             "brightness 0.8-1.2, channel shift 20/255, Gaussian noise std 0.05, reflect fill. torchvision and fastai "
             "aug_transforms differ slightly (torchvision: isotropic scale, no channel shift; fastai: its own set).", '',
             '| contender | images/s | ours / contender |', '|---|---:|---:|']
    for name, _ in contenders:
        lines.append(f"| {name} | {res[name]:,.0f} | {ours_ips / res[name]:.2f}x |")
    nn_ours, nn_kornia = res[contenders[5][0]], res[contenders[6][0]]
    lines += ['', f"Ours vs kornia: {ours_ips / kornia_ips:.2f}x (target >= 1.5x). Floor / ours: "
                  f"{floor_ips / ours_ips:.2f} (target <= 1.3). Without the noise step: ours vs kornia "
                  f"{nn_ours / nn_kornia:.2f}x. The 'ours / contender' column of the last three rows compares with the "
                  "full pipeline; for them the images/s is what counts."]
    text = '\n'.join(lines) + '\n'
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)


if __name__ == '__main__':
    main()
