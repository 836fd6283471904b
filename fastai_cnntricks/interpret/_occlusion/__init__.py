"""Occlusion's private machinery: a throw-away inference copy (BatchNorms folded), the opening chain of modules read
from one traced call, receptive fields measured per module, and the forward passes of occluded windows computed
incrementally through that chain. Only `occlusion.py` uses it; nothing here is public API."""
from .batch_tuning import batch_ladder, tuned_batches
from .inference_copy import activation_bytes, inference_copy, fold_batchnorms, set_module
from .window_forward import WindowGrid, occluded_images, window_forward
