"The interpretation tutorial notebook runs from top to bottom."
import time
from nbutil import run_notebook


def test_04_interpret_notebook_runs():
    t = time.time()
    run_notebook('04_interpret.ipynb', timeout=120)
    assert time.time() - t < 120
