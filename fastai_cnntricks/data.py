"Real image data with nothing downloaded: scikit-learn's digits, Debian's Fashion-MNIST, any ImageFolder."
from __future__ import annotations
import gzip
from pathlib import Path

import numpy as np
from fastai.vision.all import (DataBlock, ImageBlock, CategoryBlock, RandomSplitter, IndexSplitter, Resize,
                               PILImage, get_image_files, parent_label, GrandparentSplitter, verify_images)

from .core import CnnTricksError, check_count, check_fraction, check_seed, check_type

__all__ = ['digits_arrays', 'fashion_mnist_arrays', 'array_dls', 'digits_dls', 'fashion_mnist_dls', 'folder_dls',
           'few_shot_idxs', 'FASHION_MNIST_DIR', 'FASHION_CLASSES']

FASHION_MNIST_DIR = Path('/usr/share/datasets/fashion-mnist')
FASHION_CLASSES = ['T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag',
                   'Ankle boot']


def digits_arrays():
    "scikit-learn's 1,797 handwritten digits as (uint8 images (n, 8, 8) scaled to 0..255, int labels)."
    from sklearn.datasets import load_digits
    d = load_digits()
    return (d.images * (255 / 16)).round().astype(np.uint8), d.target.astype(np.int64)


def _read_idx(path):
    with gzip.open(path, 'rb') as f: data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], 'big') for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def fashion_mnist_arrays(split='train', path=FASHION_MNIST_DIR):
    "Fashion-MNIST from Debian's `dataset-fashion-mnist` IDX files: (uint8 images (n, 28, 28), int labels)."
    prefix = {'train': 'train', 'test': 't10k'}.get(split)
    if prefix is None: raise CnnTricksError(f"split={split!r} is not valid; choose 'train' or 'test'")
    path = Path(path)
    imgs, lbls = path/f'{prefix}-images-idx3-ubyte.gz', path/f'{prefix}-labels-idx1-ubyte.gz'
    if not imgs.exists() or not lbls.exists():
        raise CnnTricksError(f"Fashion-MNIST not found in {path}; install it with "
                             "`apt-get install dataset-fashion-mnist` (Debian/Ubuntu)")
    return _read_idx(imgs), _read_idx(lbls).astype(np.int64)


class ArrayImage:
    "Picklable getter: item index -> PILImage (RGB) from an in-memory uint8 array."
    def __init__(self, images): self.images = images
    def __call__(self, i): return PILImage.create(self.images[i]).convert('RGB')


class ArrayLabel:
    "Picklable getter: item index -> class name."
    def __init__(self, labels, names=None): self.labels, self.names = labels, names
    def __call__(self, i):
        y = int(self.labels[i])
        return self.names[y] if self.names is not None else str(y)


def few_shot_idxs(labels, n_per_class, seed=0):
    "Indices of `n_per_class` items of each class, drawn with `seed`."
    check_count('n_per_class', n_per_class); check_seed('seed', seed)
    rng = np.random.default_rng(seed)
    idxs = [rng.permutation(np.flatnonzero(labels == c))[:n_per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(idxs))


def _check_size(size):
    "`size` px: an int >= 1, or an (h, w) pair of them, as fastai's `Resize` takes."
    if isinstance(size, (tuple, list)) and len(size) == 2:
        return tuple(check_count('size', s) for s in size)
    return check_count('size', size)


def _as_uint8(images):
    "uint8 images as given; floats in [0, 1] scaled to 0..255 (PIL would turn them black); anything else is an error."
    images = np.asarray(images)
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (1, 3)):
        raise CnnTricksError(f"images of shape {images.shape} are not valid; pass (n, h, w) or (n, h, w, 3) arrays")
    if images.dtype == np.uint8: return images
    if np.issubdtype(images.dtype, np.floating):
        if not np.isfinite(images).all() or images.min() < 0 or images.max() > 1:
            raise CnnTricksError(f"float images must lie in [0, 1] (they are scaled to 0..255), found "
                                 f"[{np.nanmin(images):g}, {np.nanmax(images):g}]; or pass uint8 images")
        return (images * 255).round().astype(np.uint8)
    if np.issubdtype(images.dtype, np.integer) and images.min() >= 0 and images.max() <= 255:
        return images.astype(np.uint8)
    raise CnnTricksError(f"images of dtype {images.dtype} are not valid; pass uint8 (0..255) or float (0..1) arrays")


def _check_batch_size(bs, n_train):
    "fastai drops the last partial training batch: a `bs` above the training set would train on nothing."
    if bs > n_train:
        raise CnnTricksError(f"bs={bs!r} is not valid; it is larger than the {n_train} training images, so no full "
                             f"training batch exists (fastai drops the last partial one); use bs <= {n_train}")


def array_dls(images, labels, size=64, valid_pct=0.25, valid_idxs=None, bs=64, seed=42, names=None,
              item_tfms=None, batch_tfms=None, **kwargs):
    "fastai DataLoaders over in-memory images (n, h, w[, 3]), uint8 or float in [0, 1], and integer labels, at `size` px."
    size, bs, seed = _check_size(size), check_count('bs', bs), check_seed('seed', seed)
    if valid_idxs is None: check_fraction('valid_pct', valid_pct, allow_zero=False)
    images, labels = _as_uint8(images), np.asarray(labels)
    if labels.ndim != 1 or len(labels) != len(images):
        raise CnnTricksError(f"labels of shape {labels.shape} are not valid; pass one label per image "
                             f"({len(images)} images)")
    n_valid = len(set(valid_idxs)) if valid_idxs is not None else int(valid_pct * len(labels))
    _check_batch_size(bs, len(labels) - n_valid)
    splitter = IndexSplitter(valid_idxs) if valid_idxs is not None else RandomSplitter(valid_pct, seed=seed)
    item_tfms = [Resize(size)] + list(item_tfms or [])
    dblock = DataBlock(blocks=(ImageBlock, CategoryBlock(vocab=names or [str(c) for c in np.unique(labels)], sort=False)),
                       get_x=ArrayImage(images), get_y=ArrayLabel(labels, names), splitter=splitter,
                       item_tfms=item_tfms, batch_tfms=batch_tfms)
    return dblock.dataloaders(list(range(len(labels))), bs=bs, **kwargs)


def digits_dls(size=64, valid_pct=0.25, bs=64, seed=42, n_per_class=None, **kwargs):
    """scikit-learn's digits (1,797 real 8x8 handwritten digits) as fastai DataLoaders at `size` px.
    `valid_pct` of the items validate; `n_per_class` keeps only that many training images per class (few-shot),
    with the same validation set for every budget."""
    _check_size(size); check_count('bs', bs); check_seed('seed', seed)
    check_fraction('valid_pct', valid_pct, allow_zero=False)
    check_count('n_per_class', n_per_class, allow_none=True)
    x, y = digits_arrays()
    perm = np.random.default_rng(seed).permutation(len(y))
    n_valid = round(len(y) * valid_pct)
    valid, train = np.sort(perm[:n_valid]), perm[n_valid:]
    if n_per_class: train = train[few_shot_idxs(y[train], n_per_class, seed)]
    keep = np.concatenate([np.sort(train), valid])
    return array_dls(x[keep], y[keep], size, valid_idxs=list(range(len(train), len(keep))), bs=bs, seed=seed, **kwargs)


def fashion_mnist_dls(size=64, n_per_class=None, n_valid=2000, bs=64, seed=42, path=FASHION_MNIST_DIR, **kwargs):
    """Fashion-MNIST (Debian's `dataset-fashion-mnist`) as DataLoaders: `n_per_class` training images per class
    (all 60,000 when None) and the first `n_valid` test images for validation."""
    _check_size(size); check_count('bs', bs); check_seed('seed', seed)
    check_count('n_per_class', n_per_class, allow_none=True); check_count('n_valid', n_valid)
    xtr, ytr = fashion_mnist_arrays('train', path)
    xte, yte = fashion_mnist_arrays('test', path)
    tr = few_shot_idxs(ytr, n_per_class, seed) if n_per_class else np.arange(len(ytr))
    x, y = np.concatenate([xtr[tr], xte[:n_valid]]), np.concatenate([ytr[tr], yte[:n_valid]])
    return array_dls(x, y, size, valid_idxs=list(range(len(tr), len(y))), bs=bs, seed=seed, names=FASHION_CLASSES,
                     **kwargs)


def folder_dls(path, size=64, valid_pct=0.2, bs=64, seed=42, **kwargs):
    """DataLoaders over an ImageFolder-style directory (one sub-folder per class). A `train`/`valid` layout is
    used as it is; otherwise `valid_pct` of the images are held out."""
    check_type('path', path, (str, Path), 'a folder path (str or pathlib.Path)')
    _check_size(size); check_count('bs', bs); check_seed('seed', seed)
    check_fraction('valid_pct', valid_pct, allow_zero=False)
    path = Path(path)
    if not path.exists(): raise CnnTricksError(f"data folder {str(path)!r} does not exist")
    if not path.is_dir(): raise CnnTricksError(f"data path {str(path)!r} is not a folder of class sub-folders")
    files = get_image_files(path)
    if len(files) == 0:
        raise CnnTricksError(f"no images found in {str(path)!r}; expected one sub-folder per class with image files")
    bad = verify_images(files)
    if len(bad): raise CnnTricksError(f"{len(bad)} unreadable image(s) in {str(path)!r}, e.g. {str(bad[0])!r}; "
                                      "remove or fix them")
    has_split = (path/'train').is_dir() and (path/'valid').is_dir()
    splitter = GrandparentSplitter() if has_split else RandomSplitter(valid_pct, seed=seed)
    classes = sorted({parent_label(f) for f in files})
    if len(classes) < 2:
        raise CnnTricksError(f"found {len(classes)} class folder(s) in {str(path)!r}; a classifier needs at least 2")
    dblock = DataBlock(blocks=(ImageBlock, CategoryBlock), get_items=get_image_files, get_y=parent_label,
                       splitter=splitter, item_tfms=[Resize(size)] + list(kwargs.pop('item_tfms', None) or []),
                       batch_tfms=kwargs.pop('batch_tfms', None))
    dls = dblock.dataloaders(path, bs=bs, **kwargs)
    _check_batch_size(bs, len(dls.train_ds))  # the split is known only once the folder is read
    return dls
