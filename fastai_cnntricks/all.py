"`from fastai_cnntricks.all import *` brings the whole public API (fastai convention)."
from .core import *
from .data import *
from .transfer import *
from .augment import *
from .interpret import *
from .report import *
from .demo import *
