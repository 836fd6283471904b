"Freezing schedules, discriminative LRs and norm policies on a tiny CNN over real digits (fast)."
import numpy as np
import pytest
import torch
from torch import nn
from fastai.vision.all import Learner, CrossEntropyLossFlat, accuracy, set_seed, CancelFitException, Callback, load_learner

from fastai_cnntricks.core import CnnTricksError
from fastai_cnntricks.data import digits_arrays, few_shot_idxs, array_dls
from fastai_cnntricks.transfer import (timm_splitter, layer_decay_lrs, DiscriminativeLR, GradualUnfreeze, ChainThaw,
                                       LPFT, NormPolicy, ScheduleRecorder, is_norm)


def tiny_model():
    torch.manual_seed(0)
    block = lambda i, o, norm: nn.Sequential(nn.Conv2d(i, o, 3, padding=1), norm, nn.ReLU())
    body = nn.Sequential(block(3, 8, nn.BatchNorm2d(8)), block(8, 8, nn.BatchNorm2d(8)), block(8, 8, nn.GroupNorm(2, 8)),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return nn.Sequential(body, nn.Linear(8, 10))  # groups: 3 blocks + head


def small_digits(size=16, n_train=8, n_valid=40):
    "Real digits: `n_train` per class to train, a small fixed validation set (validation time dominates otherwise)."
    x, y = digits_arrays()
    tr = few_shot_idxs(y, n_train, 0)
    va = np.random.default_rng(1).permutation(np.setdiff1d(np.arange(len(y)), tr))[:n_valid]
    idx = np.concatenate([tr, va])
    return array_dls(x[idx], y[idx], size, valid_idxs=list(range(len(tr), len(idx))), bs=16, num_workers=0)


@pytest.fixture(scope='module')
def dls(): return small_digits()


def make_learner(dls, **kw):
    set_seed(0)
    learn = Learner(dls, tiny_model(), loss_func=CrossEntropyLossFlat(), metrics=accuracy, splitter=timm_splitter, **kw)
    learn.freeze()
    return learn


class FlagRecorder(Callback):
    "Per training batch: which groups have their (non-norm) conv/linear weights trainable."
    order = 90
    def before_fit(self): self.rows = []
    def before_step(self):
        self.rows.append((self.epoch, tuple(bool(g[0].requires_grad) for g in self.opt.param_lists)))


def fit(learn, n, lr=1e-2, cbs=(), **kw):
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(n, lr, cbs=list(cbs), **kw)


def test_layer_decay_lrs_values_and_errors(dls):
    learn = make_learner(dls)
    lrs = layer_decay_lrs(learn, 1e-2, 0.5)
    np.testing.assert_allclose(lrs, [1e-2 / 8, 1e-2 / 4, 1e-2 / 2, 1e-2])
    for bad in (0, -0.5, 1.5, 'x'):
        with pytest.raises(CnnTricksError, match='decay'): layer_decay_lrs(learn, 1e-2, bad)
    with pytest.raises(CnnTricksError, match='decay'): DiscriminativeLR(0)
    learn.unfreeze()
    fit(learn, 1, lr=lrs)  # usable as lr_max: per-group hypers keep the ratios
    h = [g['lr'] for g in learn.opt.hypers]
    np.testing.assert_allclose(np.array(h) / h[-1], [1 / 8, 1 / 4, 1 / 2, 1], rtol=1e-6)


def test_gradual_unfreeze_sets_groups_keeps_opt_groups_and_state(dls):
    learn = make_learner(dls)
    learn.create_opt()
    n_groups = len(learn.opt.param_lists)
    rec = FlagRecorder()
    head = learn.opt.param_lists[-1][0]
    steps = []
    class StepWatch(Callback):
        order = 95
        def after_step(self): steps.append(int(self.opt.state[head].get('step', 0)) if 'step' in self.opt.state[head] else None)
    fit(learn, 4, cbs=[GradualUnfreeze(every=1), rec, StepWatch()])
    assert len(learn.opt.param_lists) == n_groups
    by_epoch = {e: f for e, f in rec.rows}
    assert by_epoch == {0: (False, False, False, True), 1: (False, False, True, True),
                        2: (False, True, True, True), 3: (True, True, True, True)}
    # Adam state of the head survives every thaw (fastai's freeze_to would clear it): its step counter never resets
    assert steps == list(range(1, len(steps) + 1))
    # one-cycle still drove the LRs (ParamScheduler kept working)
    lrs = np.array(learn.recorder.lrs)
    assert lrs.argmax() not in (0, len(lrs) - 1) and lrs.max() > 5 * lrs[0]


def test_frozen_groups_do_not_move_even_after_training(dls):
    "ChainThaw re-freezes groups that trained: their stale grads must not keep moving them (momentum, wd)."
    learn = make_learner(dls)
    snap = {}
    class Snap(Callback):
        order = 96
        def before_epoch(self):
            snap[self.epoch] = [[p.detach().clone() for p in g] for g in self.opt.param_lists]
    fit(learn, 5, cbs=[ChainThaw(phase_epochs=1, norm=NormPolicy(affine=False)), Snap()], wd=0.1)
    # phases: head, g0, g1, g2, all. During epoch 2 only g1 trains: g0, g2 and the head stay exactly as they were
    after = snap[3]
    for gi in (0, 2, 3):
        for a, b in zip(snap[2][gi], after[gi]): assert torch.equal(a, b), f'group {gi} moved while frozen'
    assert not all(torch.equal(a, b) for a, b in zip(snap[2][1], after[1]))


def test_chain_thaw_and_fraction_schedules(dls):
    learn = make_learner(dls)
    rec = FlagRecorder()
    fit(learn, 5, cbs=[ChainThaw(), rec])
    seq = [f for _, f in rec.rows]
    phases = [f for i, f in enumerate(seq) if i == 0 or f != seq[i - 1]]
    assert phases == [(False, False, False, True), (True, False, False, False), (False, True, False, False),
                      (False, False, True, False), (True, True, True, True)]
    rec2 = FlagRecorder()
    fit(make_learner(dls), 4, cbs=[GradualUnfreeze(schedule={0: 1, .5: 'all'}), rec2])
    assert {e: f for e, f in rec2.rows} == {0: (False, False, False, True), 1: (False, False, False, True),
                                            2: (True,) * 4, 3: (True,) * 4}


def test_warmup_of_newly_thawed_group(dls):
    learn = make_learner(dls)
    fit(learn, 2, cbs=[GradualUnfreeze(every=1, warmup=1.0, decay=1)], lr=1e-2)  # decay=1: the warm-up alone
    pos, lrs, _ = learn.schedule_log.as_arrays()
    n_iter = int(round(1 / (pos[1] - pos[0])))
    e1 = pos >= 1
    ratio = lrs[e1, 2] / lrs[e1, 3]  # group 2 thawed at epoch 1, vs the head (same base LR, no decay)
    np.testing.assert_allclose(ratio, (np.arange(e1.sum()) + 1) / n_iter, rtol=1e-6)
    assert (lrs[~e1, 3] > 0).all()


def test_resume_with_start_epoch_reproduces_state(dls):
    cb = lambda: [GradualUnfreeze(every=1), DiscriminativeLR(0.5)]
    a = make_learner(dls); ra = FlagRecorder(); fit(a, 4, cbs=cb() + [ra])
    b = make_learner(dls); rb = FlagRecorder(); fit(b, 4, cbs=cb() + [rb], start_epoch=2)
    assert [r for r in ra.rows if r[0] >= 2] == rb.rows
    pa, la, _ = a.schedule_log.as_arrays(); pb, lb, _ = b.schedule_log.as_arrays()
    np.testing.assert_allclose(la[pa >= 2], lb, rtol=1e-9)


def test_interrupted_fit_leaves_consistent_state(dls):
    learn = make_learner(dls)
    class Stop(Callback):
        order = 99
        def after_step(self):
            if self.epoch == 1 and self.iter == 1: raise CancelFitException()
    fit(learn, 4, cbs=[GradualUnfreeze(every=1), DiscriminativeLR(0.5), Stop()])
    flags = [g[0].requires_grad for g in learn.opt.param_lists]
    assert flags == [False, False, True, True]  # the state at epoch 1
    hyp = np.array([h['lr'] for h in learn.opt.hypers])
    np.testing.assert_allclose(hyp, hyp[-1])  # the discriminative factors were taken off again


def test_validation_has_no_side_effects(dls):
    learn = make_learner(dls)
    learn.add_cbs([GradualUnfreeze(every=1), NormPolicy(affine=False)])
    plain = make_learner(dls)  # fastai's validate itself leaves the model in eval mode: compare with a twin
    flags = [p.requires_grad for p in learn.model.parameters()]
    with learn.no_bar(): r = learn.validate()
    with plain.no_bar(): r0 = plain.validate()
    assert flags == [p.requires_grad for p in learn.model.parameters()]
    assert [m.training for m in plain.model.modules()] == [m.training for m in learn.model.modules()]
    assert r == r0


def test_norm_policy_affine_and_stats(dls):
    learn = make_learner(dls)
    bn = learn.model[0][0][1]; gn = learn.model[0][2][1]
    rm, gw = bn.running_mean.clone(), gn.weight.detach().clone()
    fit(learn, 1, cbs=[NormPolicy(affine=False, stats='frozen')])
    assert torch.equal(bn.running_mean, rm) and torch.equal(gn.weight, gw)
    assert not bn.weight.requires_grad
    learn = make_learner(dls)
    bn = learn.model[0][0][1]; gn = learn.model[0][2][1]
    rm, gw = bn.running_mean.clone(), gn.weight.detach().clone()
    fit(learn, 1, cbs=[NormPolicy(affine=True, stats='update')])  # fastai's train_bn, for GroupNorm too
    assert not torch.equal(bn.running_mean, rm) and not torch.equal(gn.weight, gw)
    with pytest.raises(CnnTricksError, match='stats'): NormPolicy(stats='eval')


def test_is_norm_knows_timm_and_torch_norms():
    import timm.layers as tl
    for m in (nn.BatchNorm2d(4), nn.GroupNorm(2, 4), nn.LayerNorm(4), tl.BatchNormAct2d(4), tl.GroupNormAct(4, 2),
              tl.LayerNorm2d(4), tl.RmsNorm(4), tl.LayerNormAct(4), nn.InstanceNorm2d(4)):
        assert is_norm(m), type(m)
    assert not is_norm(nn.Conv2d(3, 4, 1)) and not is_norm(nn.Linear(3, 4))


def test_norm_policy_on_timm_norm_act_layers(dls):
    "timm's BatchNormAct2d (EfficientNet) in a frozen group: statistics kept, affine frozen."
    import timm
    set_seed(0)
    model = timm.create_model('tf_efficientnet_lite0', pretrained=False, num_classes=10, drop_rate=0.)
    learn = Learner(dls, model, loss_func=CrossEntropyLossFlat(), splitter=timm_splitter)
    learn.freeze()
    bn = model.bn1
    rm = bn.running_mean.clone()
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3, cbs=NormPolicy(affine=False))
    assert torch.equal(bn.running_mean, rm) and not bn.weight.requires_grad


def test_errors_and_conflicts(dls):
    learn = make_learner(dls)
    with pytest.raises(CnnTricksError, match='only 4'): fit(learn, 2, cbs=[GradualUnfreeze(schedule={0: 1, 1: 7})])
    with pytest.raises(CnnTricksError, match='conflicting'): fit(learn, 2, cbs=[GradualUnfreeze(), ChainThaw()])
    with pytest.raises(CnnTricksError, match='DiscriminativeLR'): fit(learn, 1, cbs=[DiscriminativeLR(.5), DiscriminativeLR(.5)])
    with pytest.raises(CnnTricksError, match='every'): GradualUnfreeze(every=0)
    one = Learner(dls, tiny_model(), loss_func=CrossEntropyLossFlat())  # a single parameter group: no head to find
    with pytest.raises(CnnTricksError, match='head'): fit(one, 1, cbs=[LPFT()])
    with pytest.raises(CnnTricksError, match='body and a head'): fit(one, 1, cbs=[GradualUnfreeze()])


def test_lpft_probe_phase_then_all(dls):
    learn = make_learner(dls)
    modes = []
    class Modes(Callback):
        order = 90
        def before_step(self): modes.append((self.epoch, learn.model[0][0][1].training, learn.model[0][0][0].weight.requires_grad,
                                             learn.model[0][0][1].weight.requires_grad))
    fit(learn, 2, cbs=[LPFT(lp_epochs=1), Modes()])
    assert {m for m in modes if m[0] == 0} == {(0, False, False, False)}  # body frozen, its norm layers in eval mode
    # fine-tuning: everything trains, BatchNorm keeps its statistics (the default ft_norm is NormPolicy(scope='all'))
    assert {m for m in modes if m[0] == 1} == {(1, False, True, True)}


def test_export_and_load_learner_with_callbacks(dls, tmp_path):
    learn = make_learner(dls)
    learn.add_cbs([GradualUnfreeze(every=1), DiscriminativeLR(0.5)])
    fit(learn, 1)
    learn.export(tmp_path / 'l.pkl')
    back = load_learner(tmp_path / 'l.pkl')
    assert any(isinstance(c, GradualUnfreeze) for c in back.cbs)
    back.dls = dls
    fit(back, 2)  # keeps working after the round trip
    assert len(back.schedule_log) > 0


# ---- the defaults the recipe taught (init_head, norm, decay, warm-up, LR warning), each can be turned off

class HeadAtStart(Callback):
    "The head's weights when the first optimizer step is about to be taken."
    order = 99
    def before_fit(self): self.w = None
    def before_step(self):
        if self.w is None: self.w = self.learn.model[1].weight.detach().clone()


def lr_warnings(record): return [w for w in record if 'auto_base_lr' in str(w.message)]


def test_head_only_first_phase_starts_from_the_probe(dls):
    probe = make_learner(dls)
    w0 = probe.model[1].weight.detach().clone()
    probe.probe_init_head()
    w_probe = probe.model[1].weight.detach().clone()
    for sched, want in ((GradualUnfreeze(), w_probe), (ChainThaw(), w_probe), (LPFT(), w_probe),
                        (GradualUnfreeze(init_head=False), w0)):
        learn, rec = make_learner(dls), HeadAtStart()
        fit(learn, 1, cbs=[sched, rec])
        torch.testing.assert_close(rec.w, want)
    learn, rec = make_learner(dls), HeadAtStart()  # resumed: the loaded head is kept
    fit(learn, 2, cbs=[GradualUnfreeze(), rec], start_epoch=1)
    torch.testing.assert_close(rec.w, w0)


def test_no_probe_without_a_head_only_phase(dls):
    learn, rec = make_learner(dls), HeadAtStart()
    w0 = learn.model[1].weight.detach().clone()
    fit(learn, 1, cbs=[GradualUnfreeze(start=2), rec])
    torch.testing.assert_close(rec.w, w0)


def test_lr_far_above_auto_base_lr_warns_once_and_can_be_silenced(dls):
    import warnings
    for cbs in ([GradualUnfreeze(), DiscriminativeLR()], [DiscriminativeLR()]):
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter('always')
            fit(make_learner(dls), 1, lr=1e-1, cbs=cbs)
        assert len(lr_warnings(rec)) == 1, cbs  # names auto_base_lr, once per fit
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter('always')
        fit(make_learner(dls), 1, lr=1e-1, cbs=[GradualUnfreeze(warn_lr=False), DiscriminativeLR(warn_lr=False)])
        fit(make_learner(dls), 1, lr=1e-5, cbs=[GradualUnfreeze()])  # 8 per class: auto_base_lr ~1.4e-5
    assert not lr_warnings(rec)
    with pytest.raises(CnnTricksError, match='warn_lr'): GradualUnfreeze(warn_lr='no')


def test_norm_statistics_stay_frozen_by_default(dls):
    for norm, moved in ((None, False), (NormPolicy(), True)):
        learn = make_learner(dls)
        bn = learn.model[0][1][1]  # block 1: thawed at epoch 1 of GradualUnfreeze(every=.5) over 4 groups
        rm = bn.running_mean.clone()
        fit(learn, 2, cbs=[GradualUnfreeze(every=.5, norm=norm)])
        assert bn.weight.requires_grad  # its group trains
        assert torch.equal(bn.running_mean, rm) != moved


def test_group_lrs_decay_by_default_unless_discriminative_lr_sets_them(dls):
    for kw, extra, want in ((dict(), [], 0.7), (dict(decay=1), [], 1.), (dict(), [DiscriminativeLR(0.5)], 0.5)):
        learn = make_learner(dls)
        fit(learn, 1, cbs=[GradualUnfreeze(schedule={0: 'all'}, init_head=False, **kw)] + extra)
        _, lrs, _ = learn.schedule_log.as_arrays()
        np.testing.assert_allclose(lrs[:, :-1] / lrs[:, 1:], want, rtol=1e-6)


def test_chain_thaw_warms_up_each_group_within_its_phase(dls):
    lens = [.4, 1, .2, .2, .2]  # head, g0, g1, g2, all; 5 batches per epoch
    learn = make_learner(dls)
    fit(learn, 2, cbs=[ChainThaw(phase_epochs=lens, decay=1)])
    pos, lrs, _ = learn.schedule_log.as_arrays()
    ratio = lrs[:, 0] / lrs[:, 3]  # group 0 trains alone in [.4, 1.4): warm-up over half that phase
    first, second = (pos >= .4 - 1e-9) & (pos < .9 - 1e-9), (pos >= .9 - 1e-9) & (pos < 1.4 - 1e-9)
    assert ratio[first][0] < .5 and np.all(np.diff(ratio[first]) > 0)
    np.testing.assert_allclose(ratio[second], 1.)
    fit(learn, 2, cbs=[ChainThaw(phase_epochs=lens, decay=1, warmup=0)])
    _, lrs, _ = learn.schedule_log.as_arrays()
    np.testing.assert_allclose(lrs[:, 0] / lrs[:, 3], 1.)
