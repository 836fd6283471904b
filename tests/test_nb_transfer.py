"The transfer tutorial notebook runs end to end."
from nbutil import run_notebook


def test_transfer_notebook_runs():
    nb = run_notebook('01_transfer.ipynb', timeout=300)
    outs = [o for c in nb.cells if c.cell_type == 'code' for o in c.get('outputs', [])]
    assert not [o for o in outs if o.get('output_type') == 'error']
    assert sum('image/png' in o.get('data', {}) for o in outs) >= 2  # the two schedule plots
