"augment wing: Keras-complete augmentation inside fastai's fused batch pipeline."
from .geometric import *
from .pixel import *
from .stats import *
from .keras import *
from .show import *
from .drawn_ops import *
from .class_conditional import *
from .bounded_policy import *
