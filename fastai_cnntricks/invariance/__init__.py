"invariance wing: the label-invariance check -- catalogue of fixed transforms, the sweep, the robustness check of a model, the label-preservation check of the data, the report, diversity, label-safe test-time augmentation."
from . import catalogue, sweep, report, check, diversity, label_reference, label, label_tta
from .catalogue import *
from .sweep import *
from .report import *
from .check import *
from .diversity import *
from .label_reference import *
from .label import *
from .label_tta import *

__all__ = [*catalogue.__all__, *sweep.__all__, *report.__all__, *check.__all__, *diversity.__all__,
           *label_reference.__all__, *label.__all__, *label_tta.__all__]
