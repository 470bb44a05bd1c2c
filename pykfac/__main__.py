"""Command line: ``python -m pykfac {demo,config}`` (``--help`` for details).

Exit status: 0 on success, 2 for a usage error (bad option or value, no or an
unknown command; argparse's message on stderr), 1 for an error the user can
fix at run time, such as an unwritable ``--out`` (one line on stderr).
"""
import argparse
import os
import sys

PROG = "python -m pykfac"

MAIN_DESCRIPTION = """\
pykfac: exact and Kronecker-factored curvature (GGN, Fisher, K-FAC) and
Laplace approximations for dense networks.

Start with:  python -m pykfac demo
"""

MAIN_EPILOG = """\
'%(prog)s COMMAND --help' describes a command. Without a command this help
goes to stderr and the exit status is 2 (a usage error).
"""

DEMO_DESCRIPTION = """\
The first thing to run after installing pykfac. It takes a few seconds
(about 6 s on a busy 2-core machine) and downloads nothing.

  1. makes a 2-D data set with NumPy: {classes} noisy interleaved spirals,
     {n_train} training and {n_test} test points;
  2. trains an MLP {sizes} (tanh) with K-FAC (pk.optim.KFAC and pk.train,
     {steps} full-batch steps; progress bar on stderr);
  3. fits Laplace approximations at the trained weights (pk.Laplace): diag
     and kron over all layers, a full covariance over the last layer, each
     with its prior precision tuned by marginal likelihood;
  4. prints a table for MAP, diag, kron and last-layer: test accuracy, NLL
     and ECE (pk.metrics), the mean confidence max_c p(c|x) far from the
     data (OOD), the tuned prior precision and the time (K-FAC training for
     the MAP, fit plus tuning for Laplace);
  5. writes a {width} x {height} PNG of the predictive confidence over the
     plane, one panel per method, training data overlaid.

The PNG needs matplotlib (pip install matplotlib, or pip install
".[notebooks]"); without it the demo prints the table and a line saying it
skipped the PNG. --out is checked before the computation starts. The same
--seed gives the same numbers (timings aside). BLAS runs on one thread
unless OPENBLAS_NUM_THREADS is set (the matrices are tiny).
"""


def _seed(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if not 0 <= value < 2 ** 32:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, 2**32), got {value}")
    return value


def build_parser():
    """The argument parser; returns (parser, {command: subparser})."""
    from . import __version__
    from . import demo as d

    parser = argparse.ArgumentParser(prog=PROG, description=MAIN_DESCRIPTION, epilog=MAIN_EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"pykfac {__version__}")
    commands = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND")
    sizes = "-".join(str(n) for n in (2, d.HIDDEN, d.HIDDEN, d.N_CLASSES))
    description = DEMO_DESCRIPTION.format(
        classes=d.N_CLASSES, n_train=d.N_TRAIN_PER_CLASS * d.N_CLASSES,
        n_test=d.N_TEST_PER_CLASS * d.N_CLASSES, sizes=sizes, steps=d.STEPS,
        width=round(d.FIGSIZE[0] * d.DPI), height=round(d.FIGSIZE[1] * d.DPI))
    demo = commands.add_parser(
        "demo", description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
        help="train a small classifier with K-FAC, fit Laplace approximations, "
             "print a comparison table and draw a PNG (a few seconds)")
    demo.add_argument("--out", metavar="PATH", default=d.DEFAULT_OUT,
                      help=f"the PNG to write (default: ./{d.DEFAULT_OUT}; an existing file "
                           "is replaced)")
    demo.add_argument("--seed", metavar="N", type=_seed, default=0,
                      help="seed of the data, the initial weights and K-FAC's sampling (default: 0)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars (e.g. for logs)")
    config = commands.add_parser(
        "config", help="print versions and the BLAS library in use (for bug reports)",
        description="Print pykfac's and NumPy's versions and the BLAS library the C core "
                    "loaded (pk.show_config()).")
    return parser, {"demo": demo, "config": config}


def main(argv=None):
    """Parse ``argv`` (default: sys.argv[1:]), run the command, return the exit status."""
    parser, commands = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command is None:
        if extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        parser.print_help(sys.stderr)
        print(f"{PROG}: error: choose a command: {', '.join(commands)}", file=sys.stderr)
        return 2
    if extra:  # reported with the command's own usage line (exits with status 2)
        commands[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "config":
        from . import show_config

        show_config()
        return 0
    from .demo import DemoError, run

    try:
        run(out=args.out, seed=args.seed, progress=not args.no_progress)
    except DemoError as exc:
        print(f"{PROG} demo: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG} demo: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (e.g. `| head`): stop quietly, and keep Python's
        # final flush of stdout from raising again at exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
