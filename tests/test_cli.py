"`cnntricks demo`: a report and metrics on success; one clear line and exit code 2 on bad input."
import json
import subprocess
import sys

import pytest
from PIL import Image

from fastai_cnntricks.data import digits_arrays

from fastai_cnntricks.cli import main


def run_cli(*args):
    return subprocess.run([sys.executable, '-m', 'fastai_cnntricks.cli', *args], capture_output=True, text=True,
                          timeout=300)


def test_bad_arch_one_line_exit_2():
    r = run_cli('demo', '--arch', 'resnet_nope', '--quiet')  # a real process: exit code and stderr as a user sees them
    assert r.returncode == 2, r.stderr
    assert 'unknown arch' in r.stderr and 'Traceback' not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize('args, match', [
    (['--arch', 'efficientnet_lite'], 'did you mean'),
    (['--data', '/no/such/dir'], "neither 'digits'"),
    (['--epochs', '0'], 'epochs=0'),
    (['--size', '-3'], 'size=-3'),
])
def test_bad_input_exit_2(args, match, capsys):
    assert main(['demo', *args, '--quiet']) == 2
    err = capsys.readouterr().err
    assert match in err and len(err.strip().splitlines()) == 1


def test_empty_folder_and_unreadable_image(tmp_path, capsys):
    (tmp_path/'empty').mkdir()
    assert main(['demo', '--data', str(tmp_path/'empty'), '--quiet']) == 2
    assert 'no images found' in capsys.readouterr().err
    (tmp_path/'bad'/'a').mkdir(parents=True); (tmp_path/'bad'/'b').mkdir()
    (tmp_path/'bad'/'a'/'x.png').write_bytes(b'garbage')
    assert main(['demo', '--data', str(tmp_path/'bad'), '--quiet']) == 2
    assert 'unreadable' in capsys.readouterr().err


def _digit_folder(path, n):
    "An ImageFolder of the first `n` real digits."
    x, y = digits_arrays()
    for i in range(n):
        (path/str(y[i])).mkdir(parents=True, exist_ok=True)
        Image.fromarray(x[i]).save(path/str(y[i])/f'{i}.png')
    return path


def test_fewer_training_images_than_the_batch_size(tmp_path, capsys, monkeypatch):
    from fastai.learner import Learner
    def boom(*a, **k): raise AssertionError('trained on a folder without one full batch')
    monkeypatch.setattr(Learner, 'fit', boom)
    assert main(['demo', '--data', str(_digit_folder(tmp_path/'small', 30)), '--quiet']) == 2
    err = capsys.readouterr().err
    assert 'batch' in err and len(err.strip().splitlines()) == 1 and 'Traceback' not in err


def test_demo_writes_report(tmp_path):
    data = _digit_folder(tmp_path/'data', 80)  # a small ImageFolder of real digits keeps this test quick
    out = tmp_path/'report'
    rc = main(['demo', '--data', str(data), '--epochs', '1', '--size', '32', '--out', str(out), '--quiet'])
    assert rc == 0
    page = (out/'index.html').read_text()
    for title in ('Final metrics', 'Training', 'Parameter groups', 'Schedule', 'Augmentation', 'Label invariance',
                  'Interpretation', 'Attribution maps', 'Confusion matrix'):
        assert f'<h2>{title}' in page
    assert page.count('<img') >= 10  # curves, schedule, augmentation, invariance, filters, maps, units, occlusion
    for sid in ('schedule', 'augmentation', 'invariance', 'interpretation', 'attribution'):
        assert f'<section id="{sid}">' in page
    assert 'gradcam: deletion ' in page and 'Sanity check' in page  # the verdicts and the randomization test
    assert 'peak LR (during training)' in page  # not only the annealed end-of-training LR
    assert "{'p'" not in page and '(enc:' not in page  # transforms by name and magnitude, not raw fastai reprs
    m = json.loads((out/'metrics.json').read_text())
    assert m['n_train'] == 64 and 0 <= m['accuracy'] <= 1 and m['epochs'] == 1
    assert m['recipe'] == 'fine_tune_gradual(1)'
    # the label check chose the augmentation: both axes, per class, the policy trained with, in the metrics and the page
    assert set(m['label_safe_magnitudes']) == set(m['robustness_safe_magnitudes']) >= {'rotate', 'shift', 'hflip'}
    assert set(m['label_safe_per_class']) == {str(i) for i in range(10)}
    from fastai_cnntricks.demo import POLICY
    assert m['policy'] == POLICY and m['policy_texts'] and m['label_check']['n_items'] == 64
    assert all(' up to ' in t or ' on ' in t for t in m['suggested_transforms'])
    for part in ('Label-safe magnitude per class', 'Colliding class pairs', f'Trained with: {POLICY}',
                 'robustness_safe_magnitude'):
        assert part in page, part
    assert {'label_check_s', 'fit_s', 'report_s'} <= set(m)
