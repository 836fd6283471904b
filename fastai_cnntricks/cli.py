"The `cnntricks` command."
from __future__ import annotations
import argparse, sys, warnings

# Library deprecation chatter (torch.jit inside fastai/timm) is noise for a command-line user.
warnings.filterwarnings('ignore', message='.*torch.jit.script.*is deprecated')

__all__ = ['main']


class _UsageError(Exception):
    "A command line argparse cannot parse (e.g. `--seed abc`)."


class _Parser(argparse.ArgumentParser):
    # argparse prints the usage block and exits; the command's errors are one line, so raise and let main() print
    def error(self, message): raise _UsageError(message)


def _parser():
    p = _Parser(prog='cnntricks', description='CNN tricks for fastai Learners over timm backbones')
    sub = p.add_subparsers(dest='command', required=True, parser_class=_Parser)
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


def _demo(args):
    from .demo import run_demo
    m = run_demo(data=args.data, arch=args.arch, epochs=args.epochs, size=args.size, out=args.out, seed=args.seed,
                 n_per_class=args.n_per_class, quiet=args.quiet)
    print(f"accuracy {m['accuracy']:.4f}, valid loss {m['valid_loss']:.4f}, fit {m['fit_s']} s; report: {m['report']}")


def main(argv=None):
    "Entry point: errors a user can fix print one line and exit with status 2, before any training."
    from .core import CnnTricksError
    try:
        args = _parser().parse_args(argv)
        if args.command == 'demo': _demo(args)
    except (CnnTricksError, _UsageError) as e:
        print(f'cnntricks: error: {e}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__': sys.exit(main())
