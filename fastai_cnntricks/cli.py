"The `cnntricks` command."
from __future__ import annotations
import argparse, sys, warnings

# Library deprecation chatter (torch.jit inside fastai/timm) is noise for a command-line user.
warnings.filterwarnings('ignore', message='.*torch.jit.script.*is deprecated')

__all__ = ['main']


def _parser():
    p = argparse.ArgumentParser(prog='cnntricks', description='CNN tricks for fastai Learners over timm backbones')
    sub = p.add_subparsers(dest='command', required=True)
    d = sub.add_parser('demo', help='fine-tune the embedded pretrained backbone and write an HTML report')
    d.add_argument('--data', default='digits', help="'digits' (default), 'fashion-mnist', or an ImageFolder path")
    d.add_argument('--arch', default='tf_efficientnet_lite0', help='timm architecture (default: %(default)s)')
    d.add_argument('--epochs', type=int, default=4, help='training epochs (default: %(default)s)')
    d.add_argument('--size', type=int, default=64, help='image size in pixels (default: %(default)s)')
    d.add_argument('--out', default='cnntricks_out', help='report folder (default: %(default)s)')
    d.add_argument('--seed', type=int, default=42, help='random seed (default: %(default)s)')
    d.add_argument('--n-per-class', type=int, default=None, help='training images per class (few-shot)')
    d.add_argument('--quiet', action='store_true', help='no progress bars')
    return p


def main(argv=None):
    "Entry point: errors a user can fix print one line and exit with status 2."
    args = _parser().parse_args(argv)
    from .core import CnnTricksError
    try:
        if args.command == 'demo':
            from .demo import run_demo
            m = run_demo(args.data, args.arch, args.epochs, args.size, args.out, args.seed,
                         n_per_class=args.n_per_class, quiet=args.quiet)
            print(f"accuracy {m['accuracy']:.4f}, valid loss {m['valid_loss']:.4f}, fit {m['fit_s']} s; "
                  f"report: {m['report']}")
    except CnnTricksError as e:
        print(f'cnntricks: error: {e}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__': sys.exit(main())
