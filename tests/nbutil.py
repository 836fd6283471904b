"Execute a tutorial notebook from nbs/ in a fresh kernel, as the tests do."
import os
from pathlib import Path
import nbformat
from nbclient import NotebookClient

NBS = Path(__file__).resolve().parent.parent/'nbs'


def run_notebook(name, timeout=300):
    "Run every cell of `nbs/name` (working directory nbs/); raises with the failing cell's error."
    path = NBS/name
    nb = nbformat.read(path, as_version=4)
    backend = os.environ.get('MPLBACKEND')
    os.environ['MPLBACKEND'] = 'module://matplotlib_inline.backend_inline'  # figures display as in Jupyter
    try:
        NotebookClient(nb, timeout=timeout, kernel_name='python3', resources={'metadata': {'path': str(NBS)}}).execute()
    finally:
        if backend is None: os.environ.pop('MPLBACKEND', None)
        else: os.environ['MPLBACKEND'] = backend
    return nb
