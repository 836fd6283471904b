"""Which attribution map can be trusted? Deletion and insertion AUC of Grad-CAM, occlusion, an edge detector and a
random map on the same validation images, with each method's paired gain over the random map, at several image sizes,
removing single pixels (region 1) or regions of an eighth of the side (the default). The model: the embedded
tf_efficientnet_lite0 with its probe head fitted on 10 digits per class.

    .venv/bin/python bench/faithfulness.py [--sizes 64,96,128] [--images 32] [--data digits|fashion-mnist]
"""
from __future__ import annotations
import argparse, os, sys, time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fastai_cnntricks.data import digits_dls, fashion_mnist_dls
from fastai_cnntricks.transfer import timm_learner
from fastai_cnntricks.interpret import compare_attributions, grad_cam_maps
from machine import results_table  # noqa: E402

METHODS = ('gradcam', 'occlusion', 'edges', 'random')


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--sizes', default='64,96,128')
    ap.add_argument('--images', type=int, default=32)
    ap.add_argument('--data', default='digits', choices=['digits', 'fashion-mnist'])
    ap.add_argument('--out', default=str(Path(__file__).parent / 'results' / 'faithfulness.md'))
    a = ap.parse_args()
    torch.set_num_threads(2)
    cmd = 'python bench/faithfulness.py ' + ' '.join(sys.argv[1:])
    load0 = ', '.join(f'{v:.1f}' for v in os.getloadavg())
    rows, t0 = [], time.time()
    make = digits_dls if a.data == 'digits' else fashion_mnist_dls
    for size in [int(s) for s in a.sizes.split(',')]:
        dls = make(size=size, bs=64, n_per_class=10)
        learn = timm_learner(dls, 'tf_efficientnet_lite0', pretrained='embedded')
        learn.probe_init_head()
        x = torch.cat([b[0] for b, _ in zip(dls.valid, range(-(-a.images // 64)))])[:a.images]
        fmap = grad_cam_maps(learn.model, x[:1], interpolate=None).shape[-1]  # leaves the model (BN stats) as found
        for region in (1, None):
            t = compare_attributions(learn, x, methods=METHODS, region=region)
            side = 'pixels' if region == 1 else f'{max(1, size // 8)} px regions'
            for name, r in t.iterrows():
                gains = '' if name == 'random' else (
                    f"deletion {r.deletion_gain_vs_random:+.3f} ± {r.deletion_gain_se:.3f}, "
                    f"insertion {r.insertion_gain_vs_random:+.3f} ± {r.insertion_gain_se:.3f}")
                rows.append(f'| {a.data} {size} px ({fmap}x{fmap} last map), {side}: {name} | random: deletion '
                            f'{t.loc["random", "deletion_auc"]:.3f}, insertion {t.loc["random", "insertion_auc"]:.3f} '
                            f'| | deletion {r.deletion_auc:.3f} ± {r.deletion_se:.3f}, insertion {r.insertion_auc:.3f} '
                            f'± {r.insertion_se:.3f} | {gains} | {r.seconds_per_image * 1e3:.0f} ms/image to map |')
                print(rows[-1], flush=True)
        results_table(f'Which map can be trusted ({a.data})', cmd, t0, torch.device('cpu'),
                      f"{a.images} validation images, predicted class, baseline 'mean', 16 steps; gains are paired over "
                      "the same images against the random map (positive: better), ± one standard error. "
                      f"Load average at the start: {load0}.", rows, a.out)
    print(Path(a.out).read_text())


if __name__ == '__main__':
    main()
