"interpret wing: look inside a trained CNN -- filters, feature maps, feature visualization, occlusion."
from .inputs import *
from .layers import *
from .plots import *
from .filters import *
from .featvis_param import *
from .featvis_transforms import *
from .featvis_objectives import *
from .featvis import *
from .memformat import *
from .occlusion import *
from .cam import *
from .faithfulness import *
from .sanity import *
from .top_losses import *
