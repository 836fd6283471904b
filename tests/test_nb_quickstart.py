"The quickstart notebook runs top to bottom."
from nbutil import run_notebook


def test_quickstart_notebook():
    nb = run_notebook('00_quickstart.ipynb', timeout=300)
    out = ''.join(o.get('text', '') for c in nb.cells if c.cell_type == 'code' for o in c.get('outputs', []))
    assert 'classifier' in out and 'accuracy' in out
