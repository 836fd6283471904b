"The interpretation tutorial notebook runs from top to bottom (about 30 s of CPU on 2 cores)."
from nbutil import run_notebook


def test_04_interpret_notebook_runs():
    nb = run_notebook('04_interpret.ipynb', timeout=120)
    outputs = ''.join(o.get('text', '') for c in nb.cells if c.cell_type == 'code' for o in c.get('outputs', []))
    assert 'no layer named' in outputs and 'deletion AUC' in outputs and 'rank correlation' in outputs
    assert 'gradcam: deletion ' in outputs and 'random (' in outputs  # the faithfulness verdicts
