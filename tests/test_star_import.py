"`from fastai.vision.all import *` then `from fastai_cnntricks.all import *`: fastai's names keep their meaning."
import subprocess, sys

CODE = """
import types
from fastai.vision.all import *
fastai_names = dict(globals())
from fastai_cnntricks.all import *
import fastai_cnntricks.all as api
rebound = sorted(k for k, v in fastai_names.items() if not k.startswith('_') and globals()[k] is not v)
modules = sorted(n for n in api.__all__ if isinstance(getattr(api, n), types.ModuleType))
private = sorted(n for n in api.__all__ if n.startswith('_'))
print(rebound, modules, private, sep='\\n')
print(abs(float(logit(tensor(0.5)))), create_timm_model.__module__, type(norm_types).__name__)
print(timm_model.__module__, callable(fine_tune_gradual) if 'fine_tune_gradual' in globals() else 'patched')
"""


def test_star_import_keeps_fastai_names():
    r = subprocess.run([sys.executable, '-c', CODE], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    rebound, modules, private, fastai_use, ours = r.stdout.strip().splitlines()[-5:]
    assert rebound == '[]', f"fastai names rebound by the star import: {rebound}"
    assert modules == '[]', f"submodules exported by the star import: {modules}"
    assert private == '[]', private
    assert fastai_use == '0.0 fastai.vision.learner tuple'  # logit, create_timm_model, norm_types are fastai's
    assert ours.startswith('fastai_cnntricks.transfer.weights')  # the non-clashing public name
