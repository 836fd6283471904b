"The invariance tutorial (digits, 6 ↔ 9) runs end to end; its own asserts check the story."
from nbutil import run_notebook


def test_invariance_notebook():
    nb = run_notebook('03_invariance.ipynb', timeout=600)
    assert any('6' in str(o) for c in nb.cells if c.cell_type == 'code' for o in c.get('outputs', []))
