"""The HTML report package: one `section()` for every topic, one PNG encoder, the layering (core <- wings <- report
<- demo <- cli), and the sections of the transfer and augment wings on tiny real-digit data."""
import ast
import base64
import re
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import pytest
import torch
from torch import nn
from fastai.vision.all import Learner, CrossEntropyLossFlat, accuracy, set_seed

from fastai_cnntricks.core import CnnTricksError
from fastai_cnntricks.data import digits_arrays, array_dls
from fastai_cnntricks.augment import Shear, GaussianNoise, show_augmented
from fastai_cnntricks.transfer import timm_splitter, GradualUnfreeze, DiscriminativeLR, ScheduleRecorder
from fastai_cnntricks.report import (section, fig_html, write_report, groups_section, schedule_section,
                                     augmentation_section, invariance_section, suggestion_texts, metrics_section)
import fastai_cnntricks.invariance  # noqa: F401  (adds Learner.invariance_check)

PKG = Path(__file__).resolve().parent.parent/'fastai_cnntricks'


@pytest.fixture(scope='module')
def dls():
    x, y = digits_arrays()
    return array_dls(x[:120], y[:120], size=16, valid_idxs=list(range(80, 120)), bs=16, num_workers=0)


def tiny_model():
    torch.manual_seed(0)
    block = lambda i, o: nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU())  # noqa: E731
    return nn.Sequential(nn.Sequential(block(3, 8), block(8, 8), block(8, 8), nn.AdaptiveAvgPool2d(1), nn.Flatten()),
                         nn.Linear(8, 10))


def fitted(dls, epochs, cbs):
    set_seed(0)
    learn = Learner(dls, tiny_model(), loss_func=CrossEntropyLossFlat(), metrics=accuracy, splitter=timm_splitter)
    learn.freeze()
    with learn.no_bar(), learn.no_logging(): learn.fit(epochs, 1e-2, cbs=cbs)
    return learn


# ---- the page -------------------------------------------------------------------------------------------------
def test_section_id_note_and_escaping():
    html = section('A <b>', '<p>body</p>', note='x < y', id='topic')
    assert html == '<section id="topic"><h2>A &lt;b&gt;</h2><p class="note">x &lt; y</p><p>body</p></section>'
    assert section('T', 'b') == '<section><h2>T</h2>b</section>'
    with pytest.raises(CnnTricksError, match='title'): section(3, 'b')


def test_fig_html_is_the_png_of_the_figure():
    fig, ax = plt.subplots(figsize=(1, 1))
    ax.plot([0, 1])
    tag = fig_html(fig, alt='a "q"', dpi=20)
    png = base64.b64decode(re.search(r'base64,([^"]+)"', tag).group(1))
    assert png[:8] == b'\x89PNG\r\n\x1a\n' and 'alt="a &quot;q&quot;"' in tag
    assert not plt.fignum_exists(fig.number)  # closed
    with pytest.raises(CnnTricksError, match='fig'): fig_html('not a figure')


def test_write_report(tmp_path):
    path = write_report(tmp_path/'r', 'T', [section('S', 'x', id='s')], metrics={'a': 1})
    assert path.read_text().count('<section id="s">') == 1 and (tmp_path/'r'/'metrics.json').read_text().strip()
    (tmp_path/'file').write_text('x')
    with pytest.raises(CnnTricksError, match='out_dir'): write_report(tmp_path/'file', 'T', [])


def test_metrics_section_escapes():
    assert '<th>a&lt;</th><td>1</td>' in metrics_section({'a<': 1})


# ---- the layering ---------------------------------------------------------------------------------------------
def _imports(path):
    "(module imported, [names]) for every import of the file, relative ones resolved against the package."
    mod = '.'.join(path.relative_to(PKG.parent).with_suffix('').parts)
    pkg = mod.split('.') if path.name == '__init__.py' else mod.split('.')[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for a in node.names: yield a.name, []
        elif isinstance(node, ast.ImportFrom):
            base = '.'.join(pkg[:len(pkg) - node.level + 1]) if node.level else ''
            full = '.'.join(p for p in (base, node.module or '') if p)
            yield full, [a.name for a in node.names]


# The invariance wing builds on the augment wing's public transforms (it sweeps them at fixed magnitudes).
LAYERS = {'core': 0, 'data': 1, 'transfer': 1, 'augment': 1, 'interpret': 1, 'invariance': 2, 'reference': 3,
          'report': 4, 'demo': 5, 'cli': 6}


@pytest.mark.parametrize('part', ['invariance', 'report', 'reference.py', 'demo.py', 'cli.py'])
def test_imports_point_one_way(part):
    files = [PKG/part] if part.endswith('.py') else sorted((PKG/part).rglob('*.py'))
    for f in files:
        here = f.relative_to(PKG).parts[0].removesuffix('.py')
        for mod, names in _imports(f):
            if not mod.startswith('fastai_cnntricks.'): continue
            there = mod.split('.')[1]
            if there in LAYERS and there != here:
                assert LAYERS[there] < LAYERS[here], f'{f.name} imports {mod}'
                assert len(mod.split('.')) == 2, f'{f.name} imports a wing internal: {mod}'
                assert not [n for n in names if n.startswith('_')], f'{f.name} imports private {names} from {mod}'


def test_no_wing_imports_the_report():
    for wing in ('transfer', 'augment', 'invariance', 'interpret'):
        for f in (PKG/wing).rglob('*.py'):
            for mod, names in _imports(f):
                assert not mod.startswith(('fastai_cnntricks.report', 'fastai_cnntricks.demo')), (f, mod)
                assert not (mod == 'fastai_cnntricks' and {'report', 'demo'} & set(names)), (f, mod, names)


def test_one_png_encoder_and_no_hand_built_sections():
    for f in PKG.rglob('*.py'):
        src = f.read_text()
        if f.name != 'page.py': assert 'b64encode' not in src, f
        if f.name != 'page.py': assert not re.search(r"""['"]<section[ >]""", src), f  # section() builds them


# ---- the transfer sections ------------------------------------------------------------------------------------
def test_plot_schedule_schedule_and_groups_sections(dls):
    learn = Learner(dls, tiny_model(), loss_func=CrossEntropyLossFlat(), splitter=timm_splitter)
    with pytest.raises(CnnTricksError, match='no schedule'): learn.plot_schedule()
    with pytest.raises(CnnTricksError, match='no schedule'): schedule_section(learn)
    learn = fitted(dls, 2, cbs=[GradualUnfreeze(every=0.5), DiscriminativeLR(0.7)])
    fig = learn.plot_schedule()
    assert isinstance(fig, matplotlib.figure.Figure) and len(fig.axes) == 2
    html = schedule_section(learn)
    assert html.startswith('<section id="schedule">') and 'data:image/png;base64,' in html and html.count('<tr>') == 5
    # the groups table shows each group's peak LR over the fit, labelled, beside the annealed one the optimizer holds
    html = groups_section(learn)
    assert 'peak LR (during training)' in html and 'current LR (end of training)' in html
    peaks = learn.schedule_log.as_arrays()[1].max(0)
    for p in peaks: assert f'{p:.2e}' in html
    assert len(set(peaks.round(10))) == len(peaks)  # per group: the discriminative factors show
    rec = fitted(dls, 1, cbs=[ScheduleRecorder()])
    assert len(rec.schedule_log) > 0


# ---- the augmentation section ---------------------------------------------------------------------------------
def test_show_augmented_and_augmentation_section(dls):
    x = dls.one_batch()[0][:1].float()
    fig = show_augmented(x[0], [Shear(20, p=1.), GaussianNoise(.1, p=1.)], n=3, seed=0)
    assert isinstance(fig, matplotlib.figure.Figure) and len([a for a in fig.axes if a.images]) == 4
    html = augmentation_section(images=x[0], tfms=[Shear(20, p=1.)], n=3)
    assert html.startswith('<section id="augmentation">') and 'data:image/png;base64,' in html
    assert '<li>Shear</li>' in html and "{'p'" not in html
    html = augmentation_section(images=x[0], tfms=[Shear(20, p=1.)], n=3, descriptions=['shear up to 20 °'])
    assert '<li>shear up to 20 °</li>' in html
    with pytest.raises(CnnTricksError, match='n='): augmentation_section(images=x[0], n=0)


# ---- the invariance section -----------------------------------------------------------------------------------
def test_invariance_section_names_and_magnitudes(dls):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 10))  # mirror-sensitive: some predictions change
    learn = Learner(dls, model, loss_func=CrossEntropyLossFlat())
    rep = learn.invariance_check(['rotate', 'hflip', 'darken'], {'rotate': [0, 2, 180], 'darken': [1, .95, .1]},
                                 progress=False)
    html = invariance_section(rep, max_drop=0.5)
    assert html.startswith('<section id="invariance"><h2>Label invariance</h2>')
    assert html.count('data:image/png;base64') == 2  # the plot and the flips of the worst transform
    texts = suggestion_texts(rep, 0.5)
    sug = rep.suggestions(0.5)
    assert len(texts) == len(sug) == len(rep.suggest_tfms(0.5)) > 0  # no pair merges here (darken alone)
    for r, t in zip(sug.itertuples(), texts):
        head = f'{r.tfm} on' if not rep.tfms[r.tfm].continuous else f'{r.tfm} up to {r.safe_magnitude:g}'
        assert t.startswith(head) and f'(train with {r.train_with})' in t
        assert f'<li>{t}</li>' in html
    assert "{'p'" not in html and 'enc:' not in html  # no raw fastai reprs
    with pytest.raises(CnnTricksError, match='rep='): invariance_section('report')


def test_invariance_section_of_a_label_report(dls):
    from fastai_cnntricks.invariance import label_invariance_check
    from fastai_cnntricks.report import collision_table
    rep = label_invariance_check(dls, ['rotate', 'hflip'], {'rotate': [0, 10, 180]}, epochs=2, bs=16, progress=False)
    html = invariance_section(rep, max_drop=0.02, trained_with=('label_safe', ['rotate up to 10 °']))
    assert html.startswith('<section id="invariance"><h2>Label invariance</h2>')
    for part in ('<b>label drop</b>', '<b>robustness</b>', 'Both axes per transform', 'robustness_safe_magnitude',
                 'label_safe_magnitude', 'Label-safe magnitude per class', 'Colliding class pairs',
                 '<h3>Trained with: label_safe</h3><ul><li>rotate up to 10 °</li></ul>', 'Suggested transforms'):
        assert part in html, part
    per = rep.safe_magnitudes(0.02, per_class=True)
    assert html.count('<tr>') >= len(per) + len(rep.table)  # the per-class table and the full table are there
    col = collision_table(rep, 0.02)
    safe = rep.safe_magnitudes(0.02)
    assert set(col.tfm) == {n for n, ms in (('rotate', [0, 10, 180]), ('hflip', [0, 1])) if safe[n] != ms[-1]}
    for r in col.itertuples():
        assert rep.tfms[r.tfm].severity(r.magnitude) > rep.tfms[r.tfm].severity(safe[r.tfm])
        swaps = rep.row(r.tfm, r.magnitude)['label_swaps']
        assert r.collisions == ', '.join(([f'swaps {swaps}'] if swaps else []) + [
            f'{t.true} → {t.pred} ({t.of_class:.0%})' for t in
            rep.transitions(r.tfm, r.magnitude, top=3, axis='label').itertuples()])
    with pytest.raises(CnnTricksError, match='trained_with'): invariance_section(rep, trained_with='label_safe')
    with pytest.raises(CnnTricksError, match='trained_with'): invariance_section(rep, trained_with=('a', [1]))


# ---- the attribution section's verdicts ---------------------------------------------------------------------------
def test_faithfulness_verdicts_need_twice_the_paired_standard_error():
    import pandas as pd
    from fastai_cnntricks.report import faithfulness_verdicts
    t = pd.DataFrame(dict(deletion_gain_vs_random=[0.1, -0.1, 0.], deletion_gain_se=[0.02, 0.02, 0.],
                          insertion_gain_vs_random=[0.03, 0.2, 0.], insertion_gain_se=[0.02, 0.05, 0.]),
                     index=pd.Index(['a', 'b', 'random'], name='method'))
    assert faithfulness_verdicts(t) == [
        'a: deletion better than random (+0.100 ± 0.020); insertion not distinguishable from random (+0.030 ± 0.020)',
        'b: deletion worse than random (-0.100 ± 0.020); insertion better than random (+0.200 ± 0.050)']
