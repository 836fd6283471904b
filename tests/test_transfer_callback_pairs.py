"""fastai's ReduceLROnPlateau, SaveModelCallback, EarlyStoppingCallback and GradientAccumulation, each with each schedule
(GradualUnfreeze, ChainThaw, LPFT, DiscriminativeLR, fine_tune_gradual's callbacks), for two epochs on tiny digits.
Every step the groups that train are the ones the schedule's phases name (`schedule_log`), besides the pair's own check."""
import numpy as np
import pytest
import torch
from fastai.callback.core import Callback
from fastai.callback.tracker import EarlyStoppingCallback, ReduceLROnPlateau, SaveModelCallback
from fastai.callback.training import GradientAccumulation

from fastai_cnntricks.data import digits_dls
from fastai_cnntricks.transfer import timm_learner
from fastai_cnntricks.transfer.lrs import DiscriminativeLR
from fastai_cnntricks.transfer.schedules import ChainThaw, FreezeSchedule, GradualUnfreeze, LPFT

LR, BS = 1e-3, 8
SCHEDULES = {  # a fresh callback each time; warn_lr off: 1e-3 is over 10x auto_base_lr on 4 images per class
    'GradualUnfreeze': lambda: GradualUnfreeze(every=0.5, warn_lr=False),
    'ChainThaw': lambda: ChainThaw(warn_lr=False),
    'LPFT': lambda: LPFT(lp_epochs=1, warn_lr=False),
    'DiscriminativeLR': lambda: DiscriminativeLR(warn_lr=False),
    'fine_tune_gradual': None,
}


@pytest.fixture(scope='module', autouse=True)
def one_thread():
    "A 16 px resnet10t gains nothing from a second thread, and on busy cores two threads cost 10-30x (measured)."
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope='module')
def dls(tmp_path_factory):  # 40 training images (5 batches an epoch), 36 to validate in one batch; saves go to path
    return digits_dls(size=16, n_per_class=4, bs=BS, valid_pct=0.02, val_bs=64, num_workers=0,
                      path=tmp_path_factory.mktemp('pairs'))


class Spy(Callback):
    "Keeps the fit's schedule, and the LRs and weights at each epoch's end, before the trackers (order 60) act."
    order = 59
    def before_fit(self):
        self.sched = next((cb for cb in self.learn.cbs if isinstance(cb, (FreezeSchedule, DiscriminativeLR))), None)
        self.lrs, self.states, self.steps = [], [], 0
    def after_step(self): self.steps += 1
    def after_epoch(self):
        self.lrs.append([h['lr'] for h in self.opt.hypers])
        self.states.append({k: v.clone() for k, v in self.learn.model.state_dict().items()})


def fit(dls, schedule, cb, n_epoch=2):
    "Fit a tiny resnet10t (6 groups: stem, 4 stages, head) with `schedule` and `cb`; return the learner and the spy."
    torch.manual_seed(0)
    learn = timm_learner(dls, 'resnet10t', pretrained=False)
    spy = Spy()
    if schedule == 'fine_tune_gradual': learn.fine_tune_gradual(n_epoch, base_lr=LR, cbs=[cb, spy])
    else: learn.fit(n_epoch, LR, cbs=[SCHEDULES[schedule](), cb, spy])  # constant LR: ReduceLROnPlateau's use
    check_phases(learn, spy.sched)
    return learn, spy


def check_phases(learn, sched):
    "At every optimizer step the fully trainable groups are the schedule's phase there (norm layers follow NormPolicy)."
    pos, lrs, trainable = learn.schedule_log.as_arrays()
    assert len(pos) > 0
    n = trainable.shape[1]
    for p, frac in zip(pos, trainable):
        want = set(range(n)) if isinstance(sched, DiscriminativeLR) else set(sched.trainable_groups(p))
        assert {i for i in range(n) if frac[i] == 1} == want, (p, frac)
    if isinstance(sched, DiscriminativeLR):  # its factors reach the optimizer: each group 0.7 x the one above
        np.testing.assert_allclose(lrs[:, :-1] / lrs[:, 1:], sched.decay, rtol=1e-6)


@pytest.mark.parametrize('schedule', list(SCHEDULES))
def test_reduce_lr_on_plateau(schedule, dls):
    "min_delta=10 means no epoch improves: with patience 0 the LR falls by `factor` after epoch 2, every group alike."
    learn, spy = fit(dls, schedule, ReduceLROnPlateau(monitor='valid_loss', min_delta=10, patience=0, factor=4))
    np.testing.assert_allclose([h['lr'] for h in learn.opt.hypers], np.array(spy.lrs[-1]) / 4)
    assert learn.opt.unscaled_lrs is None  # no schedule factor baked into the LRs it divided


@pytest.mark.parametrize('schedule', list(SCHEDULES))
def test_save_model_keeps_the_best_epoch_and_reloads(schedule, dls):
    learn, spy = fit(dls, schedule, SaveModelCallback(monitor='valid_loss', fname=f'best_{schedule}'))
    best = int(np.argmin([v[1] for v in learn.recorder.values]))  # values: train_loss, valid_loss, accuracy
    sd = learn.model.state_dict()
    assert all(torch.equal(sd[k], spy.states[best][k]) for k in sd)  # at the end it loaded the best epoch's weights
    saved = learn.save('reloaded')
    fresh = timm_learner(dls, 'resnet10t', pretrained=False).load('reloaded')
    xb, _ = dls.valid.one_batch()
    learn.model.eval(); fresh.model.eval()
    with torch.no_grad(): assert torch.equal(learn.model(xb), fresh.model(xb))
    assert saved.exists()


@pytest.mark.parametrize('schedule', list(SCHEDULES))
def test_early_stopping_ends_mid_schedule_cleanly(schedule, dls):
    "Stopped after epoch 2 of 4: the groups are the schedule's phase at that point and no LR factor is left behind."
    learn, spy = fit(dls, schedule, EarlyStoppingCallback(monitor='valid_loss', min_delta=10, patience=0), n_epoch=4)
    assert len(learn.recorder.values) == 2
    assert learn.opt.unscaled_lrs is None and [h['lr'] for h in learn.opt.hypers] == spy.lrs[-1]
    if isinstance(spy.sched, FreezeSchedule):
        last = learn.schedule_log.pos[-1]
        nonnorm = [[p for p in g if p.ndim > 1] for g in learn.opt.param_lists]  # conv/linear weights, not norms
        assert {i for i, g in enumerate(nonnorm) if g[0].requires_grad} == set(spy.sched.trainable_groups(last))


@pytest.mark.parametrize('schedule', list(SCHEDULES))
def test_gradient_accumulation_steps_every_k_batches(schedule, dls):
    "n_acc = 2 batches: 5 batches an epoch give 2 optimizer steps (the 5th batch's gradient waits for the next epoch's)."
    learn, spy = fit(dls, schedule, GradientAccumulation(n_acc=2 * BS))
    assert spy.steps == len(learn.schedule_log) == 5  # 10 batches over 2 epochs, one step per 2
