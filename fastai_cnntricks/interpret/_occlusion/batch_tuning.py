"""The batch size (and path: incremental or full) occluded windows run in, measured on the case at hand.

Which batch runs fastest depends on the model, the image size and the device: on a CPU small batches stay in cache,
which pays where incremental inference shrinks each window's work, while whole-image passes want large batches.
So the first windows are run in a few candidate configurations, each timed; that is real work (its drops are kept),
and the rest of the windows run in the configuration that was fastest per window."""
from __future__ import annotations
import time

import torch

__all__ = ['batch_ladder', 'tuned_batches']

LARGE_TRIAL_PAYBACK = 2  # the largest batch is tried only with at least this many such batches of windows left


def batch_ladder(device: torch.device, cap: int) -> list:
    "Candidate batch sizes for `device`, none above `cap` (what fits memory); the smallest one even beyond it."
    sizes = (4, 16, 64) if device.type == 'cpu' else (16, 64, 256, 1024)
    return [s for s in sizes if s <= cap] or [max(1, cap)]


def _sync(device):
    if device.type == 'cuda': torch.cuda.synchronize(device)


def tuned_batches(pos: torch.Tensor, paths: dict, *, batch_size=None, cap: int = 64):
    """Yield (positions, forward) batches covering every row of `pos` (windows (N, 2)) once. With a `batch_size`,
    the first of `paths` (name -> forward, 'full' last) in that size. Without, every path runs one batch of the middle
    size of `batch_ladder` (cropped ones first: they are usually the fastest), the whole-image path also one of the
    largest size where enough windows are left for a win there to pay for the trial (compute-bound nets want large
    batches, depthwise-heavy ones cache-sized ones), and the fastest cropped path, if it is the fastest per window,
    one of the next smaller size (crops may run faster in cache); each trial is timed around its yield (the
    consumer's work), and the rest runs in the fastest configuration."""
    if batch_size is not None:
        yield from ((p, next(iter(paths.values()))) for p in pos.split(batch_size))
        return
    device, ladder, done, timings = pos.device, batch_ladder(pos.device, cap), 0, {}
    def trials():
        *cropped, full = paths.values()
        mid = len(ladder) // 2
        for fwd in cropped: yield ladder[mid], fwd
        yield ladder[mid], full
        if mid != len(ladder) - 1 and len(pos) - done >= LARGE_TRIAL_PAYBACK * ladder[-1]: yield ladder[-1], full
        bs, fwd = min(timings, key=timings.get)
        if fwd is not full and mid > 0: yield ladder[mid - 1], fwd
    for bs, fwd in trials():
        chunk = pos[done:done + bs]
        if len(chunk) == 0: return
        _sync(device); t = time.perf_counter()
        yield chunk, fwd
        _sync(device); timings[bs, fwd] = (time.perf_counter() - t) / len(chunk)  # seconds per window
        done += len(chunk)
    bs, fwd = min(timings, key=timings.get)
    rest = pos[done:]
    if len(rest) == 0: return
    # equal batches of at most `bs`, not a small last one: every new batch shape pays a one-off kernel setup
    yield from ((p, fwd) for p in rest.tensor_split(-(-len(rest) // bs)))
