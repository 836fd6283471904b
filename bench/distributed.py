"""What `find_unused_parameters=True` (transfer_distrib_ctx's default, which freezing schedules need) costs under DDP.

Two processes (gloo on CPU; nccl with --device cuda on 2 GPUs, gloo when both share one), embedded tf_efficientnet_lite0 at 64 px on digits:
- the phase where every group trains (there `False` works too): time per optimizer step with True vs False, in
  interleaved rounds (True, False, True, False, ...) so that a drifting machine load hits both alike;
- `GradualUnfreeze` as a whole with True: time per step in each phase, and whether both ranks end bit-identical;
- the same schedule with False: what DDP does then (an error, or ranks that drift apart).

    flock /tmp/bench.lock .venv/bin/python bench/distributed.py [--quick] [--device cpu|cuda]
"""
from __future__ import annotations
import argparse, json, os, socket, subprocess, sys, time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent)); sys.path.insert(0, str(HERE))


# ---------------------------------------------------------------- worker (one rank)
def worker(a):
    import torch
    from fastai.callback.core import Callback
    from fastai.vision.all import set_seed
    from fastai_cnntricks.data import digits_dls
    from fastai_cnntricks.transfer import timm_learner, GradualUnfreeze, gradual_schedule
    from fastai_cnntricks.transfer.distributed import transfer_distrib_ctx  # noqa: F401 (patches Learner)
    torch.set_num_threads(a.threads)
    rank = int(os.environ['RANK'])

    class StepTimer(Callback):
        "Wall time of each optimizer step (after the first of each epoch), with the training position."
        order = 99
        def before_fit(self): self.log = []
        def before_batch(self):
            if self.training:
                if a.device == 'cuda': torch.cuda.synchronize()
                self.t = time.perf_counter()
        def after_step(self):
            if a.device == 'cuda': torch.cuda.synchronize()
            if self.iter > 0: self.log.append((self.epoch + self.iter / self.n_iter, time.perf_counter() - self.t))

    def run(fup, schedule):
        set_seed(0)
        dls = digits_dls(size=64, n_per_class=a.per_class, bs=a.bs, valid_pct=0.05, num_workers=0, seed=0,
                         device=a.device)
        torch.manual_seed(0)  # the same head on every rank
        learn = timm_learner(dls, 'tf_efficientnet_lite0', pretrained='auto')
        if not schedule: learn.unfreeze()
        timer = StepTimer()
        # fine_tune_gradual's schedule: the head alone for 25% of training, then one group more at even steps, all by 75%
        sched = GradualUnfreeze(schedule=gradual_schedule(len(learn.splitter(learn.model))), unit='fraction',
                                warn_lr=False, init_head=False)
        t0, error = time.perf_counter(), None
        extra = {}
        if a.share_gpu:  # two ranks on one GPU: nccl refuses a duplicate GPU, gloo takes CUDA tensors
            from accelerate import InitProcessGroupKwargs
            extra['kwargs_handlers'] = [InitProcessGroupKwargs(backend='gloo')]
        try:
            with learn.transfer_distrib_ctx(find_unused_parameters=fup, **extra), learn.no_bar(), learn.no_logging():
                learn.fit_one_cycle(sched_epochs(a) if schedule else a.epochs, 1e-3,
                                    cbs=[timer] + ([sched] if schedule else []))
        except Exception as e:  # what DDP does with find_unused_parameters=False under a freezing schedule
            error = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
        sd = {k: v.detach().cpu().clone() for k, v in learn.model.state_dict().items()}
        return dict(steps=timer.log, error=error, wall=time.perf_counter() - t0), sd

    out = {}
    for name in a.cases.split(','):
        kind, fup = name.rsplit('_', 1)
        res, sd = run(fup == 'True', kind == 'schedule')
        torch.save(sd, f"{a.tmp}/{name}_rank{rank}.pt")
        out[name] = res
        if rank == 0: print(name, res['error'] or f"{res['wall']:.1f} s", flush=True)
    Path(f"{a.tmp}/times_rank{rank}.json").write_text(json.dumps(out))


def sched_epochs(a): return max(a.epochs, 4)  # enough steps in each of its three parts


# ---------------------------------------------------------------- launcher
def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def launch(a, cases, timeout):
    "Run `cases` in 2 fresh ranks; returns (per-case results of rank 0, per-case 'identical'/'differ', log tail)."
    import torch
    port, procs = _free_port(), []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE='2', LOCAL_WORLD_SIZE='2',
                   MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), OMP_NUM_THREADS=str(a.threads))
        if a.device == 'cpu': env['CUDA_VISIBLE_DEVICES'] = ''
        if a.share_gpu: env['LOCAL_RANK'] = '0'  # both ranks on cuda:0
        args = [sys.executable, __file__, '--worker', '--cases', ','.join(cases), '--tmp', a.tmp,
                '--threads', str(a.threads), '--epochs', str(a.epochs), '--per-class', str(a.per_class),
                '--bs', str(a.bs), '--device', a.device] + (['--share-gpu'] if a.share_gpu else [])
        procs.append(subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = []
    for p in procs:
        try: logs.append(p.communicate(timeout=timeout)[0])
        except subprocess.TimeoutExpired:
            for q in procs: q.kill()
            return None, None, f"timed out after {timeout} s"
    if any(p.returncode for p in procs): return None, None, logs[0][-1500:] + logs[1][-1500:]
    res = json.loads(Path(f"{a.tmp}/times_rank0.json").read_text())
    same = {}
    for c in cases:
        s0, s1 = (torch.load(f"{a.tmp}/{c}_rank{r}.pt", weights_only=True) for r in range(2))
        n_diff = sum(not torch.equal(s0[k], s1[k]) for k in s0)
        same[c] = 'bit-identical' if n_diff == 0 else f"{n_diff} of {len(s0)} tensors differ"
    return res, same, logs[0][-600:]


def ms(steps, lo=0., hi=float('inf')):
    "Median ms per step of the steps whose position lies in [lo, hi)."
    import statistics
    v = [t for p, t in steps if lo <= p < hi]
    return statistics.median(v) * 1e3 if v else float('nan'), len(v)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
    ap.add_argument('--cases', default='', help=argparse.SUPPRESS)
    ap.add_argument('--tmp', default='/tmp/bench_distributed')
    ap.add_argument('--quick', action='store_true', help='2 rounds of 2 epochs instead of 3 rounds of 3')
    ap.add_argument('--device', default='cpu', choices=('cpu', 'cuda'))
    ap.add_argument('--threads', type=int, default=1, help='torch threads per rank (2 ranks on 2 cores: 1)')
    ap.add_argument('--epochs', type=int, default=None)
    ap.add_argument('--rounds', type=int, default=None, help='interleaved True/False rounds (default 3; quick 2)')
    ap.add_argument('--per-class', type=int, default=60, help='training images per class (split over the 2 ranks)')
    ap.add_argument('--bs', type=int, default=32, help='batch size per rank')
    ap.add_argument('--share-gpu', action='store_true', help=argparse.SUPPRESS)
    ap.add_argument('--out', default=str(HERE/'results'/'distributed.md'))
    a = ap.parse_args()
    if a.epochs is None: a.epochs = 2 if a.quick else 3
    if a.worker: return worker(a)
    if a.device == 'cuda':
        import torch
        a.share_gpu = torch.cuda.device_count() < 2  # one GPU: both ranks on it over gloo (comm unlike nccl's)
    from machine import results_table
    Path(a.tmp).mkdir(parents=True, exist_ok=True)
    rounds = a.rounds or (2 if a.quick else 3)
    cmd = 'python bench/distributed.py ' + ' '.join(sys.argv[1:])
    t0, rows = time.time(), []
    backend = 'gloo' if a.device == 'cpu' else 'gloo, both ranks on one GPU' if a.share_gpu else 'nccl'
    note = (f"2 ranks ({backend}, {a.threads} thread(s) each), tf_efficientnet_lite0 (embedded weights) at 64 px, digits "
            f"{a.per_class} per class ({a.per_class * 10 // 2} images per rank), batch {a.bs} per rank, "
            f"fit_one_cycle({a.epochs}, 1e-3). Median wall time per optimizer step (the first step of each epoch "
            "left out) on rank 0. All groups training: True and False interleaved in one pair of processes, "
            f"{rounds} rounds. Schedule: fine_tune_gradual's GradualUnfreeze (head alone to 25%, all groups by 75%) over "
            f"{sched_epochs(a)} epochs, median per part. "
            f"Load average at the start: {', '.join(f'{v:.1f}' for v in os.getloadavg())}.")
    write = lambda: results_table(f"DDP: the cost of find_unused_parameters ({'quick' if a.quick else 'full'})", cmd,
                                  t0, f"{a.device} x 2 processes", note, rows, a.out)

    per = {True: [], False: []}
    same_all = {True: set(), False: set()}
    for r in range(rounds):
        order = (True, False) if r % 2 == 0 else (False, True)
        res, same, log = launch(a, [f"all_{f}" for f in order], timeout=900)
        if res is None: rows.append(f"| all groups train, round {r + 1} | | | | | FAILED: {log[-300:]!r} |"); write(); continue
        for f in order:
            per[f].append(ms(res[f"all_{f}"]['steps'])[0]); same_all[f].add(same[f"all_{f}"])
    import statistics
    if per[True] and per[False]:
        t_true, t_false = statistics.median(per[True]), statistics.median(per[False])
        rows.append(f"| every group trains ({rounds} rounds, {a.epochs} epochs each) | find_unused_parameters=False: "
                    f"{t_false:.0f} ms/step ({', '.join(f'{v:.0f}' for v in per[False])}) | | "
                    f"find_unused_parameters=True: {t_true:.0f} ms/step ({', '.join(f'{v:.0f}' for v in per[True])}) | "
                    f"{t_true / t_false:.3f}x | ranks: True {', '.join(same_all[True])}; False {', '.join(same_all[False])} |")
        print(rows[-1], flush=True); write()

    res, same, log = launch(a, ['schedule_True'], timeout=900)
    if res is None: rows.append(f"| GradualUnfreeze, find_unused_parameters=True | | | | | FAILED: {log[-300:]!r} |")
    else:
        steps, e = res['schedule_True']['steps'], sched_epochs(a)
        parts = [('head alone', 0, .25 * e), ('groups thawing', .25 * e, .75 * e), ('all groups', .75 * e, e)]
        parts = '; '.join(f"{n}: {ms(steps, lo, hi)[0]:.0f}" for n, lo, hi in parts)
        rows.append(f"| GradualUnfreeze (fine_tune_gradual's schedule), {e} epochs, find_unused_parameters=True | | | "
                    f"{ms(steps)[0]:.0f} ms/step ({parts}) | | ranks {same['schedule_True']} |")
    print(rows[-1], flush=True); write()

    res, same, log = launch(a, ['schedule_False'], timeout=600)
    if res is None: outcome = f"the run failed or hung: {log[-200:]!r}"
    else:
        err = res['schedule_False']['error']
        outcome = f"DDP raised {err}" if err else f"ran; ranks {same['schedule_False']}"
    rows.append(f"| GradualUnfreeze (fine_tune_gradual's schedule), find_unused_parameters=False | | | | | {outcome} |")
    print(rows[-1], flush=True)
    print(write())


if __name__ == '__main__':
    main()
