"The HTML report: the page (`section`, `fig_html`, `write_report`) and one `<topic>_section` per topic."
from . import page, training, transfer, augmentation, invariance, interpretation, attribution
from .page import *
from .training import *
from .transfer import *
from .augmentation import *
from .invariance import *
from .interpretation import *
from .attribution import *

__all__ = [*page.__all__, *training.__all__, *transfer.__all__, *augmentation.__all__, *invariance.__all__,
           *interpretation.__all__, *attribution.__all__]
