"augment wing: Keras-complete augmentation inside fastai's fused batch pipeline."
from .geometric import *
from .pixel import *
from .stats import *
from .keras import *
from .show import *
