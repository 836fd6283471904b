"Test configuration: `gpu` tests run only where CUDA is available; no test touches the network."
import os
import pytest
import torch

os.environ.setdefault('HF_HUB_OFFLINE', '1')  # a stray hub lookup fails fast instead of hanging
os.environ.setdefault('MPLBACKEND', 'Agg')


def pytest_configure(config):
    config.addinivalue_line('markers', 'gpu: needs a CUDA device (skipped without one)')
    config.addinivalue_line('markers', 'slow: longer than a few seconds')


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available(): return
    skip = pytest.mark.skip(reason='needs CUDA')
    for item in items:
        if 'gpu' in item.keywords: item.add_marker(skip)
