"augment wing: Keras-complete augmentation inside fastai's fused batch pipeline."
from .geometric import *
from .pixel import *
from .stats import *
from .keras import *
from .show import *
from .report_section import *
from .invariance import *; from .invariance_catalogue import *; from .invariance_report import *; from .invariance_diversity import *; from .invariance_reference import *; from .invariance_report_section import *
