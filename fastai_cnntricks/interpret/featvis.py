"""Feature visualization, idea 4 of 4: the optimization loop -- `learn.maximize_unit` (several units in one batch)
and `learn.top_activating` (the validation images that excite a unit most)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader as TorchDataLoader
from fastai.data.load import DataLoader
from fastai.learner import Learner
from fastcore.basics import patch
from fastprogress.fastprogress import progress_bar

from ..core import (CnnTricksError, check_bool, check_choice, check_count, check_int, check_number, check_positive,
                    check_seed, check_type, get_layer, layer_name, model_device, preserve_model)
from .featvis_objectives import Objective, OUTPUT, objectives
from .featvis_param import MIN_SIZE, check_param, image_param
from .featvis_transforms import get_transforms
from .inputs import (check_finite, check_image_size, check_stats, image_batch, input_stats, model_dtype,
                     model_in_channels, to_display, usable_model)
from .layers import capture, StopForward, as_maps
from .memformat import memory_format, memory_format_for
from .plots import finish, image_grid

__all__ = ['run_objective', 'render']


def run_objective(model, objective: Objective, x: torch.Tensor) -> dict:
    "Forward `x`, stopping as soon as the objective's layers are captured; -> dict name -> (B, C, H, W) maps."
    layers = [l for l in objective.layers if l != OUTPUT]
    need_out = OUTPUT in objective.layers
    with capture(model, layers, stop=not need_out) as acts:
        out = None
        try: out = model(x)
        except StopForward: pass
        maps = {k: as_maps(model, v) for k, v in acts.items()}
    if need_out: maps[OUTPUT] = out
    return maps


def _check_render_args(*, n, size, steps, param, decorrelate, transforms, lr, stats, seed, progress, channels_last,
                       channels=3):
    check_count('n', n); check_image_size('size', size, least=MIN_SIZE); check_count('steps', steps)
    check_param(param); check_bool('decorrelate', decorrelate); get_transforms(transforms)
    check_positive('lr', lr); check_seed('seed', seed)
    check_stats(stats, channels)
    check_bool('progress', progress); check_bool('channels_last', channels_last)


def _check_init(init, n: int, channels: int):
    "`init`: None, or images (1 or `n`, `channels`, H, W) of finite values in [0, 1]."
    if init is None: return None
    check_type('init', init, torch.Tensor, f'images (1 or {n}, {channels}, H, W) in [0, 1]')
    if init.dim() != 4 or len(init) not in (1, n) or init.shape[1] != channels or not init.is_floating_point():
        raise CnnTricksError(f"init of shape {tuple(init.shape)} and {init.dtype} is not valid; pass float images "
                             f"(1 or {n}, {channels}, H, W) in [0, 1]")
    check_finite('init', init)
    if bool((init < 0).any() or (init > 1).any()):
        raise CnnTricksError(f"init holds values in [{float(init.min()):.3g}, {float(init.max()):.3g}]; pass images "
                             "in [0, 1] (a model input is mapped back with to_display)")
    return init


def render(model, objective: Objective, n: int, size=128, steps=256, *, param='fft', decorrelate=True,
           transforms='standard', lr=0.05, stats=None, seed=None, progress=True, channels_last=True,
           init=None) -> torch.Tensor:
    """Optimize `n` images (one batch) to maximize `objective` on `model`; -> images (n, C, H, W) in [0, 1], C the
    model's input channels. They start from noise, or from `init` (images (1 or n, C, h, w) in [0, 1], resized to
    `size`). Colour decorrelation applies to 3-channel models only (it is an RGB matrix).
    Meanwhile the model is in eval mode with frozen weights, so no weight gradient is ever computed, and runs in
    channels-last memory format if asked (faster on CPU: see bench/RESULTS.md); afterwards it is as found. The images
    are optimized in float32 and handed to a half-precision model in its own dtype."""
    usable_model(model)
    check_type('objective', objective, Objective, 'an Objective (see objectives.channel, objectives.logit, ...)')
    channels = model_in_channels(model)
    _check_render_args(n=n, size=size, steps=steps, param=param, decorrelate=decorrelate, transforms=transforms, lr=lr,
                       stats=stats, seed=seed, progress=progress, channels_last=channels_last, channels=channels)
    init = _check_init(init, n, channels)
    device, dtype = model_device(model), model_dtype(model)
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    hw = check_image_size('size', size, least=MIN_SIZE)
    if init is not None and tuple(init.shape[2:]) != hw:
        init = F.interpolate(init.float(), size=hw, mode='bilinear', antialias=True, align_corners=False).clamp(0, 1)
    params, image = image_param(n, hw, param=param, decorrelate=decorrelate and channels == 3, generator=gen,
                                device=device, channels=channels, init=init)
    tfm = get_transforms(transforms)
    opt = torch.optim.Adam(params, lr=lr)
    fmt = memory_format_for(channels_last)
    with preserve_model(model), memory_format(model, enabled=channels_last):
        model.eval()
        for p in model.parameters(): p.requires_grad_(False)
        for _ in (progress_bar(range(steps), leave=False) if progress else range(steps)):
            x = tfm(image(), generator=gen)
            if stats is not None: x = (x - stats[0]) / stats[1]
            x = x.to(dtype).contiguous(memory_format=fmt)
            loss = -objective(run_objective(model, objective, x)).float().sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    with torch.no_grad(): return image().detach().cpu()


def _units(unit):
    units = list(unit) if isinstance(unit, (list, tuple, range, torch.Tensor)) else [unit]
    if not units: raise CnnTricksError("unit=[] is empty; pass a channel index or a list of them")
    try: return [check_int('unit', u, lo=0) for u in units]
    except CnnTricksError:
        raise CnnTricksError(f"unit={unit!r} is not valid; pass an int channel index >= 0 or a list of them") from None


def _check_units(model, name, units, size, stats):
    "Dry pass: every unit must exist at `name` (or in the output for logits)."
    h, w = check_image_size('size', size)
    with torch.no_grad():
        x = torch.full((1, model_in_channels(model), h, w), 0.5, device=model_device(model))
        if stats is not None: x = (x - stats[0]) / stats[1]
        maps = run_objective(model, Objective(None, [name]), x.to(model_dtype(model)))
    n = maps[name].shape[1]
    bad = [u for u in units if not 0 <= u < n]
    if bad:
        what = 'outputs' if name == OUTPUT else f'channels of layer {name!r}'
        raise CnnTricksError(f"unit {bad[0]} is beyond the {n} {what} (valid: 0..{n - 1})")


def _named_objective(objective: str, name: str, per_image: list) -> Objective:
    "The objective called `objective` for one unit per image."
    if objective == 'channel': return objectives.channel(name, per_image)
    if objective == 'neuron': return objectives.neuron(name, per_image)
    return objectives.logit(per_image)


@patch
def maximize_unit(self: Learner, layer,  # dotted layer name or module (ignored for objective='logit')
                  unit,  # channel (or class for 'logit') index, or a list: all are optimized together in one batch
                  objective='channel',  # 'channel', 'neuron', 'logit', or an `Objective` (composable with + and *)
                  steps: int = 256, size: int | None = None,  # optimization steps; image size in px (default 128)
                  param: str = 'fft',  # 'fft' (1/f-scaled spectrum) or 'pixel'
                  decorrelate: bool = True,  # optimize in Lucid's decorrelated colour space
                  transforms='standard',  # robustness transforms: 'standard', 'none', RobustTransforms or callable
                  lr: float = 0.05,
                  diversity: float = 0.,  # weight of the diversity term (with n_per_unit > 1)
                  n_per_unit: int = 1,  # images per unit (made different from each other by `diversity`)
                  seed: int | None = None, progress: bool = True, show: bool = True,
                  init=None):  # start image: path, PIL image, tensor, dataset item or index into the validation set
    """Feature visualization: images that maximize `unit` of `layer` (Olah et al., Distill 2017), from noise or
    from a real image `init` (then `size` defaults to its size). Normalization comes from the DataLoaders (or
    timm's config). A model taking 1 or more than 3 channels gets images of its channel count, without the colour
    decorrelation (an RGB matrix), noted in the figure. Returns (images (N, C, size, size) in [0, 1], Figure)."""
    units = _units(unit)
    if not isinstance(objective, Objective): check_choice('objective', objective, ['channel', 'neuron', 'logit'])
    _check_render_args(n=1, size=128 if size is None else size, steps=steps, param=param, decorrelate=decorrelate,
                       transforms=transforms, lr=lr, stats=None, seed=seed, progress=progress, channels_last=True)
    check_number('diversity', diversity, lo=0); check_count('n_per_unit', n_per_unit); check_bool('show', show)
    model = usable_model(self.model, 'learn.model')
    name = OUTPUT if objective == 'logit' else layer_name(model, get_layer(model, layer))
    per_image = [u for u in units for _ in range(n_per_unit)]
    channels = model_in_channels(model)
    stats = stats_for_channels(input_stats(self, model_device(model)), channels)
    start = _start_images(self, init, n=len(per_image), stats=stats)
    if size is None: size = tuple(start.shape[2:]) if start is not None else 128
    with preserve_model(model):
        model.eval()
        if isinstance(objective, Objective): obj = objective
        else:
            _check_units(model, name, units, size, stats)
            obj = _named_objective(objective, name, per_image)
        if diversity:
            div_layer = name if name != OUTPUT else obj.layers[0]
            obj = obj + diversity * objectives.diversity(div_layer, groups=per_image)
        imgs = render(model, obj, len(per_image), size=size, steps=steps, param=param, decorrelate=decorrelate,
                      transforms=transforms, lr=lr, stats=stats, seed=seed, progress=progress, init=start)
    titles = [f'{"class" if objective == "logit" else "unit"} {u}' for u in per_image]
    what = obj.name if isinstance(objective, Objective) else objective
    fig = image_grid(imgs[:, :3], titles, ncols=min(len(imgs), 8), size=1.6,
                     suptitle=f"{'logits' if name == OUTPUT else name}: {what}{_channel_note(channels)}")
    return imgs, finish(fig, show)


def stats_for_channels(stats, channels: int):
    """Normalization (mean, std) of 3 values fitted to a model of `channels` inputs as timm fits RGB weights to
    `in_chans` (`adapt_input_conv`): their mean for 1 channel, repeated cyclically for more than 3."""
    if stats is None or channels == 3 or stats[0].shape[1] != 3: return stats
    if channels == 1: return tuple(s.mean(1, keepdim=True) for s in stats)
    return tuple(s.repeat(1, -(-channels // 3), 1, 1)[:, :channels] for s in stats)


def _channel_note(channels: int) -> str:
    "What the figure of a non-RGB model's images must say."
    if channels == 3: return ''
    shown = 'shown in grey' if channels == 1 else 'first 3 channels shown as RGB'
    return f"\n{channels}-channel input: colour decorrelation off, {shown}"


def _start_images(learn, init, n: int, stats):
    "`init` as starting images (1 or `n`, C, H, W) in [0, 1] (None for none), read as `learn.predict` reads images."
    if init is None: return None
    if isinstance(init, int) and not isinstance(init, bool):
        ds = learn.dls.valid_ds
        init = ds[check_int('init', init, lo=0, hi=len(ds) - 1)]
    xb = image_batch(learn, init, name='init').float()
    if len(xb) not in (1, n):
        raise CnnTricksError(f"init is a batch of {len(xb)} images; pass 1 image or {n} (one per image optimized)")
    if stats is not None: xb = xb * stats[1] + stats[0]  # the DataLoaders' Normalize undone
    return xb.clamp(0, 1)


@patch
def top_activating(self: Learner, layer,  # dotted layer name or module
                   unit,  # channel index or a list of them
                   k: int = 9,  # images per unit
                   dl=None,  # DataLoader to search (default: the validation set, in its fixed order)
                   synth: torch.Tensor | None = None,  # e.g. maximize_unit's images, shown first in each row
                   max_batches: int | None = None,  # search only the first batches (a quick look)
                   progress: bool = True, show: bool = True):
    """The `k` images of `dl` with the highest mean activation of each unit. Returns (indices (U, k) into the
    DataLoader's items, activations (U, k), images (U, k, 3, H, W) in [0, 1], Figure)."""
    units = _units(unit)
    check_count('k', k); check_count('max_batches', max_batches, allow_none=True)
    check_type('dl', dl, (DataLoader, TorchDataLoader, type(None)), 'a DataLoader (e.g. learn.dls.valid) or None')
    if synth is not None:
        check_type('synth', synth, torch.Tensor, "a tensor of images (N, 3, H, W) in [0, 1], e.g. maximize_unit's")
        if synth.dim() != 4 or len(synth) == 0:
            raise CnnTricksError(f"synth of shape {tuple(synth.shape)} is not valid; pass images (N, 3, H, W)")
        check_finite('synth', synth)
    check_bool('progress', progress); check_bool('show', show)
    model = usable_model(self.model, 'learn.model')
    dl = dl if dl is not None else self.dls.valid
    name = layer_name(model, get_layer(model, layer))
    dtype = model_dtype(model)
    scores = []
    with preserve_model(model), torch.no_grad():
        model.eval()
        for i, b in enumerate(progress_bar(dl, leave=False) if progress else dl):
            if max_batches is not None and i >= max_batches: break
            xb = torch.as_tensor(b[0]).as_subclass(torch.Tensor).to(dtype)
            maps = run_objective(model, Objective(None, [name]), xb)[name]
            if not scores:
                bad = [u for u in units if not 0 <= u < maps.shape[1]]
                if bad: raise CnnTricksError(f"unit {bad[0]} is beyond the {maps.shape[1]} channels of layer "
                                             f"{name!r} (valid: 0..{maps.shape[1] - 1})")
            scores.append(maps[:, units].float().mean((2, 3)).cpu())
    if not scores: raise CnnTricksError("the DataLoader is empty")
    scores = torch.cat(scores).T  # (U, n_items)
    k = min(k, scores.shape[1])
    top, idxs = scores.as_subclass(torch.Tensor).topk(k, dim=1)
    flat = idxs.reshape(-1).tolist()
    # the items again, through the same item and batch transforms (a test DataLoader of the raw images)
    xb = self.dls.test_dl([dl.dataset[i][0] for i in flat]).one_batch()[0]
    imgs = to_display(self, torch.as_tensor(xb).as_subclass(torch.Tensor)).reshape(len(units), k, *xb.shape[1:])
    extra = synth is not None
    tiles, titles = [], []
    for r, u in enumerate(units):  # one row per unit: [synthetic image,] top-k images with their activations
        if extra: tiles.append(synth[r % len(synth)]); titles.append(f'unit {u}')
        tiles += list(imgs[r]); titles += [f'{float(v):.2f}' for v in top[r]]
    fig = image_grid(tiles, titles, ncols=k + extra, size=1.2, suptitle=f'{name}: top-{k} activating images')
    return idxs, top, imgs, finish(fig, show)
