"Transfer learning: timm stage groups, offline weights, the Learner, and freeze/unfreeze schedules."
from .weights import *
from .groups import *
from .learner import *
