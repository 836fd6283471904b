"invariance wing: the label-invariance check -- catalogue of fixed transforms, the sweep, the report, diversity."
from . import catalogue, sweep, report, check, diversity
from .catalogue import *
from .sweep import *
from .report import *
from .check import *
from .diversity import *

__all__ = [*catalogue.__all__, *sweep.__all__, *report.__all__, *check.__all__, *diversity.__all__]
