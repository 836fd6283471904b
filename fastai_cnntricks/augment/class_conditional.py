"""Class-conditional augmentation: a transform applied only to the items of the classes whose label it preserves.

Built in one call from a per-class table of safe magnitudes (rows: class names, columns: the invariance catalogue's
transform names, values: each class's largest label-preserving magnitude, the neutral value where there is none),
as `label_invariance_check(...).safe_magnitudes(per_class=True)` returns it:

    batch_tfms = class_conditional_tfms(report.safe_magnitudes(per_class=True), dls.vocab)

A 180-degree rotation then turns the 0s, 1s and 8s and leaves the 6s and 9s alone. The transforms read the labels
of each training batch (fastai batch transforms see the `(x, y)` tuple in `before_call`), draw per item a magnitude
uniform up to its class's limit with probability `p` per transform, and apply the geometric ones in one resampling
pass (which `fuse_tfms` can merge with other geometric transforms) and the pixel ones batched. Validation batches
pass untouched; items whose class has no safe magnitude for any drawn transform are copied bit for bit (when
`fuse_tfms` merges the geometric part with other transforms, that single pass resamples every image: unmoved ones
then differ by float rounding, under 1e-6 measured at 28 and 50 px, exact at 32 px).
"""
from __future__ import annotations

import torch

from ..core import CnnTricksError, check_choice, check_number, check_type
from .geometric import FILL_MODES
from .drawn_ops import SOURCES, check_limit, draw_magnitudes, drawn_tfms, policy_ops

__all__ = ['class_limits', 'class_conditional_tfms']


def _vocab_names(vocab, table):
    "The class names in label order: `vocab` as given (a fastai CategoryMap, a list), else the table's rows."
    if vocab is None: return [str(c) for c in table.index]
    try: names = [str(v) for v in vocab]
    except TypeError: check_type('vocab', vocab, (list, tuple), "the DataLoaders' vocab (dls.vocab) or a list of class names")
    if not names or len(set(names)) != len(names):
        raise CnnTricksError(f"vocab={vocab!r} is not valid; pass the DataLoaders' vocab (dls.vocab): distinct class names")
    return names


def class_limits(table, vocab=None):
    """({transform name: [limit per class, in `vocab` order]}, class names) from a class x transform table of safe
    magnitudes, every value checked against the transform's valid range."""
    import pandas as pd
    check_type('table', table, pd.DataFrame, "a class x transform DataFrame (safe_magnitudes(per_class=True))")
    if table.empty: raise CnnTricksError("table is empty; pass a class x transform DataFrame of safe magnitudes")
    names = _vocab_names(vocab, table)
    rows = {str(c): c for c in table.index}
    missing, extra = [c for c in names if c not in rows], [c for c in rows if c not in names]
    if missing or extra:
        raise CnnTricksError(f"table rows do not match vocab: missing {missing}, not in vocab {extra}; "
                             "the rows must be the DataLoaders' class names")
    res = {}
    for col in table.columns:
        check_choice('table column', str(col), SOURCES)
        res[str(col)] = [check_limit(str(col), table.at[rows[c], col]) for c in names]
    return res, names


def class_conditional_tfms(table,  # class x transform DataFrame: each class's largest label-preserving magnitude
                           vocab=None,  # class names in label order (dls.vocab); None: the table's row order
                           p=0.5,  # probability per item and transform of applying it (within its class's limit)
                           fill_mode='reflection') -> list:  # fill mode of the resampling pass (see `FILL_MODES`)
    """fastai batch transforms (training only) applying each transform of `table` to the items of the classes
    for which it preserves the label, magnitude uniform up to that class's limit; put them in `batch_tfms`."""
    limits, names = class_limits(table, vocab)
    check_number('p', p, lo=0, hi=1)
    check_choice('fill_mode', fill_mode, FILL_MODES)
    ops, cols = [], []
    for name, lim in limits.items():
        for op in policy_ops(name): ops.append(op); cols.append((name, lim))
    if not ops: raise CnnTricksError("table has no transform columns; pass a class x transform DataFrame")
    lim_t = torch.tensor([lim for _, lim in cols], dtype=torch.float32)  # (n_ops, n_classes)
    source = [list(limits).index(name) for name, _ in cols]  # shift_x and shift_y share their column's coin

    def sampler(x, y):
        if y is None or not isinstance(y, torch.Tensor) or y.ndim != 1 or y.shape[0] != x.shape[0] \
                or y.dtype.is_floating_point:
            raise CnnTricksError("class-conditional augmentation needs single-label batches (x, y) with one class index "
                                 f"per image; got y={type(y).__name__}{tuple(getattr(y, 'shape', ()))}")
        lim = lim_t.to(x.device)  # float draws: x may still be uint8 (OpDraws runs first)
        if int(y.max()) >= lim.shape[1] or int(y.min()) < 0:
            raise CnnTricksError(f"a label {int(y.max())} is outside the table's {lim.shape[1]} classes; "
                                 "build the transforms with this DataLoaders' vocab")
        per_item = lim[:, y.long()]  # (n_ops, N) each item's class limit
        m = draw_magnitudes(ops, per_item)
        coin = torch.rand(len(limits), x.shape[0], device=x.device) < p
        neutral = torch.tensor([op.neutral for op in ops], device=x.device)[:, None]
        return torch.where(coin[source], m, neutral)

    return drawn_tfms(ops, sampler, fill_mode=fill_mode)
