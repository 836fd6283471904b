"Transfer learning: timm stage groups, offline weights, the Learner, and freeze/unfreeze schedules."
from .weights import *
from .groups import *
from .learner import *
from .norms import *
from .lrs import *
from .schedules import *
from .forgetting import *
from .recipes import *
from .head_init import *
from .plot_schedule import *
from .distributed import *
