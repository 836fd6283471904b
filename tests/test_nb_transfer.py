"The transfer tutorial runs end to end, and its comparison says what the README says: the recipe beats fine_tune."
import re
from nbutil import run_notebook


def test_transfer_notebook_runs():
    nb = run_notebook('01_transfer.ipynb', timeout=300)
    outs = [o for c in nb.cells if c.cell_type == 'code' for o in c.get('outputs', [])]
    assert not [o for o in outs if o.get('output_type') == 'error']
    assert sum('image/png' in o.get('data', {}) for o in outs) >= 2  # the two schedule plots
    table = nb.cells[-1].outputs[-1]['data']['text/plain']
    acc = {k.strip(): float(v) for k, v in re.findall(r'^([^\d\n]+?)[ \t]+(\d\.\d+)$', table, re.M)}
    assert acc['fine_tune_gradual'] >= 0.75 and acc['linear probe'] >= 0.6, acc
    assert acc['fine_tune_gradual'] > acc['fastai fine_tune'], acc
