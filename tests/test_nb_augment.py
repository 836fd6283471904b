"The augmentation tutorial notebook runs top to bottom."
from nbutil import run_notebook


def test_nb_augment_runs():
    nb = run_notebook('02_augment.ipynb', timeout=120)
    outs = [o for c in nb.cells if c.cell_type == 'code' for o in c.get('outputs', [])]
    assert any('image/png' in o.get('data', {}) for o in outs)
