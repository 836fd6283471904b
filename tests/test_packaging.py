"Packaging: the sdist builds into a wheel that installs and imports in a fresh venv; requirements leave torch alone."
import subprocess, sys, tarfile
from configparser import ConfigParser
from pathlib import Path
import sysconfig

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _settings():
    cfg = ConfigParser(delimiters=['='])
    cfg.read(ROOT/'settings.ini', encoding='utf-8')
    return cfg['DEFAULT']


def _run(*cmd, cwd=None):
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r.stdout


def test_requirements_have_lower_bounds_only():
    reqs = _settings()['requirements'].split()
    assert not [r for r in reqs if '<' in r or '==' in r], reqs  # a user's newer torch must not be downgraded
    pins = (ROOT/'constraints-dev.txt').read_text()
    assert 'torch==2.14.1' in pins and 'torchvision==0.29.1' in pins  # the dev setup installs what was tested
    assert '-c constraints-dev.txt' in (ROOT/'Makefile').read_text()


def test_optional_parts_are_extras_and_dev_has_them():
    cfg = _settings()
    dev = cfg['dev_requirements'].split()
    for key in 'weights_requirements', 'distributed_requirements':
        assert set(cfg[key].split()) <= set(dev), key  # tests and demo need the extras
    assert not any(r.startswith(('efficientnet', 'accelerate')) for r in cfg['requirements'].split())


def test_nbdev_reads_the_project():
    from nbdev.config import get_config
    cfg = get_config(ROOT)  # nbdev 3 refuses a project with settings.ini alone
    assert cfg.nbs_path == ROOT/'nbs' and cfg.lib_path == ROOT/'fastai_cnntricks'


@pytest.mark.slow
def test_sdist_builds_a_wheel_that_installs(tmp_path):
    _run(sys.executable, '-m', 'build', '--no-isolation', '--sdist', '--outdir', tmp_path/'dist', ROOT)
    sdist, = (tmp_path/'dist').glob('*.tar.gz')
    with tarfile.open(sdist) as tf:
        names = {n.split('/', 1)[1] for n in tf.getnames() if '/' in n}
        assert {'settings.ini', 'README.md', 'LICENSE', 'setup.py'} <= names
        tf.extractall(tmp_path/'src', filter='data')
    src, = (tmp_path/'src').iterdir()
    _run(sys.executable, '-m', 'build', '--no-isolation', '--wheel', '--outdir', tmp_path/'dist', src)
    wheel, = (tmp_path/'dist').glob('*.whl')
    # a fresh venv sharing this venv's torch/fastai through a .pth (no downloads), with the wheel installed in it
    venv = tmp_path/'venv'
    _run(sys.executable, '-m', 'venv', '--without-pip', venv)
    py = venv/'bin'/'python'
    site = Path(_run(py, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])').strip())
    (site/'shared.pth').write_text(sysconfig.get_paths()['purelib'] + '\n')
    _run(sys.executable, '-m', 'pip', '--python', py, 'install', '-q', '--no-deps', '--no-index', wheel)
    out = _run(py, '-c', "import fastai_cnntricks.all as a, importlib.metadata as md; "
                         "m = md.metadata('fastai_cnntricks'); print(a.__file__); print(m['License-Expression']); "
                         "print(md.requires('fastai_cnntricks'))", cwd=tmp_path)  # not from the checkout
    where, license, requires = out.splitlines()
    assert where.startswith(str(site)), where  # the installed wheel, not the editable checkout
    assert license == 'Apache-2.0'
    assert 'torch>=2.1' in requires and '<=' not in requires.split('extra')[0]
    assert (venv/'bin'/'cnntricks').exists()
