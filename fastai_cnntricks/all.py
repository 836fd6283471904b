"`from fastai_cnntricks.all import *` brings the whole public API (fastai convention), and nothing else."
import sys as _sys

from .core import *
from .data import *
from .transfer import *
from .augment import *
from .interpret import *
from .invariance import *
from .reference import *
from .report import *
from .demo import *


def _public_api():
    "The union of the package's modules' `__all__`: submodule names and private helpers stay out of a star import."
    pkg = __name__.rpartition('.')[0]
    mods = [m for k, m in list(_sys.modules.items()) if k.startswith(pkg + '.') and m is not None
            and not any(part.startswith('_') for part in k.split('.')[1:])]
    return sorted({n for m in mods for n in getattr(m, '__all__', ()) if n in globals()})


__all__ = _public_api()
