"The quickstart notebook runs top to bottom, and its headline (the recipe's accuracy) is true at its size."
import re
from nbutil import run_notebook


def _text(o): return o.get('text', '') + o.get('data', {}).get('text/plain', '')


def test_quickstart_notebook():
    nb = run_notebook('00_quickstart.ipynb', timeout=300)
    out = ''.join(_text(o) for c in nb.cells if c.cell_type == 'code' for o in c.get('outputs', []))
    assert 'classifier' in out and out.count('blocks.6') >= 2  # the group tables, each displayed once
    acc = float(re.search(r'accuracy (\d\.\d+) with 300 training images', out).group(1))
    assert acc >= 0.85, acc  # the product working: 30 digits per class, 64 px, fine_tune_gradual(3)
