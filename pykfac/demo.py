r"""The first-run demo (``python -m pykfac demo``): K-FAC training and Laplace
approximations on a 2-D toy problem, end to end in a few seconds.

1. Data made here with NumPy (no download): three interleaved noisy spirals,
   300 training and 1500 test points, seeded.
2. A 2-50-50-3 tanh MLP trained with full-batch K-FAC (``pk.optim.KFAC``,
   step size and momentum from the quadratic model) for 300 steps. Little
   weight decay and few data: the MAP fits the training set perfectly and is
   overconfident, the situation Laplace approximations are for.
3. ``pk.Laplace`` at the trained weights: ``diag`` and ``kron`` over all
   layers, ``full`` over the last layer; the prior precision of each is tuned
   by maximising the marginal likelihood.
4. Scores on the test set (``pk.metrics``: accuracy, NLL, ECE), the mean
   confidence ``max_c p(c|x)`` far from the data, and a PNG of the confidence
   on a grid for each method (needs matplotlib, an optional dependency;
   without it the PNG is skipped with a message).

``run(out="pykfac_demo.png", seed=0)`` does all of it and returns the numbers;
``python -m pykfac demo --help`` is the command-line front end.
"""
import contextlib
import os
import sys
import textwrap
import time

import numpy as np

__all__ = ["run", "compute", "check_out", "make_spirals", "DemoError", "DEFAULT_OUT", "FIGSIZE", "DPI",
           "METHODS"]

DEFAULT_OUT = "pykfac_demo.png"
# The PNG is FIGSIZE * DPI pixels (no tight bounding box, so the size is fixed).
FIGSIZE = (10.0, 8.5)
DPI = 100

N_CLASSES = 3
N_TRAIN_PER_CLASS = 100
N_TEST_PER_CLASS = 500
NOISE = 0.45
HIDDEN = 50
STEPS = 300
WEIGHT_DECAY = 1e-4
N_OOD = 1000
OOD_RADII = (6.0, 8.0)     # the spirals reach radius ~4; the plotted square covers this ring
EXTENT = 8.0               # the confidence maps cover [-EXTENT, EXTENT]^2
GRID = 120                 # grid points per axis
CLASS_COLOURS = ("tab:cyan", "white", "lime")   # readable on every shade of the colour map
COLOUR_MAP = "magma"                            # dark = uncertain, light yellow = confident
PREDICT_ROWS = 1000        # rows per predictive call: bounds the (rows, 3, D) Jacobians to ~70 MB

# (row name, description, pk.Laplace keyword arguments); None is the MAP itself
METHODS = (
    ("MAP", "none (point estimate)", None),
    ("diag", "diagonal GGN, all layers", dict(structure="diag", subset="all")),
    ("kron", "K-FAC (KFLR), all layers", dict(structure="kron", subset="all")),
    ("last-layer", "full GGN, last layer", dict(structure="full", subset="last_layer")),
)


class DemoError(Exception):
    """A problem the user can fix (e.g. an unwritable output path)."""


# ---- data --------------------------------------------------------------------
def make_spirals(n_per_class, n_classes=N_CLASSES, noise=NOISE, rng=None):
    """``n_classes`` interleaved spiral arms in 2-D with Gaussian noise.

    Arm c is ``r (cos φ, sin φ)`` with ``r = 3 t``, ``φ = 4 t + 2π c / n_classes``
    and ``t = √u``, ``u ~ U(0.02, 1)`` (uniform density along the arm), plus
    ``N(0, noise² I)``. Returns X (n_per_class * n_classes, 2) float64 and
    y (int64), ordered by class."""
    rng = np.random.default_rng(rng)
    X, y = [], []
    for c in range(n_classes):
        t = np.sqrt(rng.uniform(0.02, 1.0, n_per_class))
        phi = 4.0 * t + 2.0 * np.pi * c / n_classes
        arm = 3.0 * t[:, None] * np.stack([np.cos(phi), np.sin(phi)], axis=1)
        X.append(arm + rng.normal(0.0, noise, (n_per_class, 2)))
        y.append(np.full(n_per_class, c, dtype=np.int64))
    return np.concatenate(X), np.concatenate(y)


def _ring(n, radii, rng):
    """n points uniform in angle, with radius uniform in ``radii``."""
    phi = rng.uniform(0.0, 2.0 * np.pi, n)
    r = rng.uniform(radii[0], radii[1], n)
    return r[:, None] * np.stack([np.cos(phi), np.sin(phi)], axis=1)


def _softmax(F):
    F = F - F.max(axis=1, keepdims=True)
    E = np.exp(F)
    return E / E.sum(axis=1, keepdims=True)


# ---- environment ---------------------------------------------------------------
def _blas_threads():
    """One BLAS thread for the run unless the user set OPENBLAS_NUM_THREADS.

    The matrices here are small (the widest layer has 50 units): BLAS threads
    only add synchronisation, and on a busy 2-core machine they made the
    training ten times slower."""
    from . import set_num_threads

    if "OPENBLAS_NUM_THREADS" in os.environ:
        return contextlib.nullcontext()
    return set_num_threads(1)


def _matplotlib():
    """(Figure, FigureCanvasAgg) or None when matplotlib is not installed.

    The object-oriented API with an explicit Agg canvas: no pyplot, so the
    user's backend and global figure state are left alone."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    return Figure, FigureCanvasAgg


def check_out(path):
    """The absolute output path, or DemoError when it cannot be written.

    Checked before the computation, so a typo fails at once. A file that
    already exists is left unchanged; one created by the check is removed."""
    path = os.fspath(path)
    if not path:
        raise DemoError("--out: empty path")
    path = os.path.abspath(path)
    if os.path.isdir(path):
        raise DemoError(f"--out: {path} is a directory; give a file name such as "
                        f"{os.path.join(path, DEFAULT_OUT)}")
    if os.path.splitext(path)[1].lower() != ".png":
        raise DemoError(f"--out: the demo writes a PNG; give a file name ending in .png, got {path}")
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        what = "is not a directory" if os.path.exists(parent) else "does not exist"
        raise DemoError(f"--out: {parent} {what}")
    existed = os.path.exists(path)
    try:
        with open(path, "ab"):
            pass
    except OSError as exc:
        raise DemoError(f"--out: cannot write {path}: {exc.strerror or exc}") from None
    if not existed:
        os.remove(path)
    return path


# ---- the experiment ------------------------------------------------------------
def _train(pk, net, X, y, seed, progress):
    opt = pk.optim.KFAC(net, loss="ce", damping=0.1, weight_decay=WEIGHT_DECAY, seed=seed)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=STEPS, desc="K-FAC training", unit="step", file=sys.stderr,
                   leave=False)

    def tick(step, value):
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(f"loss {value:.3g}", refresh=False)
        return False

    try:
        hist = pk.train(net, opt, (X, y), epochs=STEPS, batch_size=None, progress=False,
                        seed=seed, callback=tick)
    finally:
        if bar is not None:
            bar.close()
    return hist


def _predict(la, X):
    """GLM predictive (probit) in row blocks, so the Jacobians stay small."""
    return np.concatenate([la.predictive(X[i:i + PREDICT_ROWS])
                           for i in range(0, X.shape[0], PREDICT_ROWS)])


def _scores(pk, probs, y, probs_ood, map_classes):
    m = pk.metrics
    return {"accuracy": m.accuracy(probs, y), "nll": m.nll(probs, y), "ece": m.ece(probs, y),
            "ood_confidence": float(np.mean(probs_ood.max(axis=1))),
            "agreement": float(np.mean(probs.argmax(axis=1) == map_classes))}


def compute(seed=0, progress=True, want_maps=True):
    """Run the experiment without printing a report; returns the dict described in
    :func:`run` (``maps`` empty unless ``want_maps``)."""
    import pykfac as pk

    rng = np.random.default_rng(seed)
    Xtr, ytr = make_spirals(N_TRAIN_PER_CLASS, rng=rng)
    Xte, yte = make_spirals(N_TEST_PER_CLASS, rng=rng)
    Xood = _ring(N_OOD, OOD_RADII, rng)
    axis = np.linspace(-EXTENT, EXTENT, GRID)
    Xgrid = np.stack(np.meshgrid(axis, axis), axis=-1).reshape(-1, 2)

    net = pk.MLP([2, HIDDEN, HIDDEN, N_CLASSES], activation="tanh", seed=seed)
    t0 = time.perf_counter()
    hist = _train(pk, net, Xtr, ytr, seed, progress)
    train_time = time.perf_counter() - t0
    result = {
        "seed": seed, "n_train": len(ytr), "n_test": len(yte), "n_params": net.num_params,
        "sizes": net.sizes, "train_time": train_time, "train_loss": float(hist["loss"][-1]),
        "train_accuracy": pk.metrics.accuracy(_softmax(net(Xtr)), ytr),
        "data_radius": float(np.sqrt((Xtr ** 2).sum(axis=1)).max()),
        "train_data": (Xtr, ytr), "rows": [], "maps": {},
    }
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(METHODS) - 1, desc="Laplace", unit="fit", file=sys.stderr,
                   leave=False)
    try:
        for name, what, kwargs in METHODS:
            row = {"method": name, "posterior": what}
            if kwargs is None:
                map_classes = net(Xte).argmax(axis=1)
                row.update(_scores(pk, _softmax(net(Xte)), yte, _softmax(net(Xood)), map_classes))
                row.update(time=train_time, prior_precision=None, n_params=net.num_params)
                grid_probs = _softmax(net(Xgrid)) if want_maps else None
            else:
                if bar is not None:
                    bar.set_postfix_str(name)
                # optimize_prior_precision imports scipy.optimize (~0.1-0.3 s) on its
                # first call; done here so that the first row's time is not that
                import scipy.optimize  # noqa: F401

                t0 = time.perf_counter()
                la = pk.Laplace(net, likelihood="classification", **kwargs)
                la.fit((Xtr, ytr))
                la.optimize_prior_precision(method="marglik")
                fit_time = time.perf_counter() - t0
                row.update(_scores(pk, _predict(la, Xte), yte, _predict(la, Xood), map_classes))
                row.update(time=fit_time, prior_precision=float(np.ravel(la.prior_precision)[0]),
                           n_params=la.n_params)
                grid_probs = _predict(la, Xgrid) if want_maps else None
                if bar is not None:
                    bar.update(1)
            if want_maps:
                result["maps"][name] = grid_probs.max(axis=1).reshape(GRID, GRID)
            result["rows"].append(row)
    finally:
        if bar is not None:
            bar.close()
    return result


# ---- report ----------------------------------------------------------------------
WIDTH = 79  # the report fits an 80-column terminal


def _paragraph(text, indent=""):
    return textwrap.fill(text, WIDTH, initial_indent=indent, subsequent_indent=indent,
                         break_on_hyphens=False)


def _table(rows):
    head = ("method", "params", "accuracy", "NLL", "ECE", "OOD conf.", "prior prec.", "time [s]")
    body = []
    for r in rows:
        prior = "—" if r["prior_precision"] is None else f"{r['prior_precision']:.3g}"
        body.append((r["method"], f"{r['n_params']:,}", f"{r['accuracy']:.3f}", f"{r['nll']:.3f}",
                     f"{r['ece']:.3f}", f"{r['ood_confidence']:.3f}", prior, f"{r['time']:.3g}"))
    widths = [max(len(line[i]) for line in [head] + body) for i in range(len(head))]

    def fmt(line):  # the method left-aligned, numbers right-aligned
        return "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                         for i, (cell, w) in enumerate(zip(line, widths))).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(head), rule] + [fmt(line) for line in body])


def _legend(items, indent=2, key_width=11):
    """Aligned ``key  text`` lines, the text wrapped under itself."""
    pad = " " * (indent + key_width)
    return "\n".join(" " * indent + f"{key:<{key_width}}" + _paragraph(text, pad)[len(pad):]
                     for key, text in items)


def _intro():
    sizes = "-".join(str(s) for s in (2, HIDDEN, HIDDEN, N_CLASSES))
    n_train = N_TRAIN_PER_CLASS * N_CLASSES
    return "\n".join([
        "pykfac demo: train a classifier with K-FAC, then fit Laplace approximations.",
        _legend([
            ("data", f"{N_CLASSES} noisy interleaved spirals in 2-D, made with NumPy: {n_train} "
                     f"training and {N_TEST_PER_CLASS * N_CLASSES} test points"),
            ("model", f"MLP {sizes} (tanh)"),
            ("training", f"{STEPS} full-batch K-FAC steps (pk.optim.KFAC), weight decay "
                         f"{WEIGHT_DECAY:g}, i.e. a Gaussian prior of precision "
                         f"N x {WEIGHT_DECAY:g} = {n_train * WEIGHT_DECAY:g}"),
            ("Laplace", "pk.Laplace at the trained weights, prior precision tuned by marginal "
                        "likelihood: diag (diagonal GGN) and kron (Kronecker-factored GGN, "
                        "KFLR) over all layers, "
                        "last-layer (full GGN of the last layer)"),
        ]),
    ])


def _report(res, out_path, png_note):
    rows = {r["method"]: r for r in res["rows"]}
    lap = [r for r in res["rows"] if r["method"] != "MAP"]
    agree = min(r["agreement"] for r in lap)
    parts = [
        f"Trained in {res['train_time']:.1f} s: training loss {res['train_loss']:.2g}, "
        f"training accuracy {res['train_accuracy']:.3f}.",
        "",
        _table(res["rows"]),
        "",
        f"Scores on the {res['n_test']} test points; lower NLL and ECE are better.",
        _legend([
            ("NLL", "mean negative log-likelihood"),
            ("ECE", "expected calibration error (15 bins)"),
            ("OOD conf.", f"mean max_c p(c|x) on {N_OOD} points {OOD_RADII[0]:g}-{OOD_RADII[1]:g} "
                          "from the origin, away from the training data (radius <= "
                          f"{res['data_radius']:.1f}); 1/{N_CLASSES} = 'no idea'"),
            ("time", "MAP: K-FAC training; Laplace: curvature fit + prior tuning"),
        ]),
        "",
        _paragraph(
            f"Far from the data the MAP is {100 * rows['MAP']['ood_confidence']:.0f}% confident, "
            "the Laplace approximations "
            + ", ".join(f"{100 * r['ood_confidence']:.0f}% ({r['method']})" for r in lap) + ". "
            "They keep the MAP's weights and add the curvature's uncertainty through the "
            f"linearised network: they predict the MAP's class on at least {100 * agree:.1f}% of "
            "the test points, but are less sure of it."),
        "",
    ]
    if out_path is not None:
        parts.append(f"Confidence maps (MAP, diag, kron, last-layer):\n  {out_path}")
    else:
        parts.append(png_note)
    parts.append("")
    parts.append(_paragraph(
        "Next: README.md (sections 'Laplace' and 'K-FAC optimiser'), the notebooks in "
        "notebooks/ of the source repository, and this demo's source, pykfac/demo.py."))
    return "\n".join(parts)


def _plot(res, path):
    Figure, FigureCanvasAgg = _matplotlib()
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2, sharex=True, sharey=True)
    Xtr, ytr = res["train_data"]
    ext = (-EXTENT, EXTENT, -EXTENT, EXTENT)
    titles = {"MAP": "MAP (K-FAC training)", "diag": "Laplace, diag (all layers)",
              "kron": "Laplace, kron (all layers)", "last-layer": "Laplace, last layer (full)"}
    marks = ("o", "s", "^", "D", "v")
    image = None
    ring = np.linspace(0.0, 2.0 * np.pi, 200)
    for ax, row in zip(axes.ravel(), res["rows"]):
        name = row["method"]
        image = ax.imshow(res["maps"][name], origin="lower", extent=ext, cmap=COLOUR_MAP,
                          vmin=1.0 / N_CLASSES, vmax=1.0, interpolation="bilinear")
        for c in range(N_CLASSES):
            sel = ytr == c
            ax.scatter(Xtr[sel, 0], Xtr[sel, 1], s=9, marker=marks[c % len(marks)],
                       color=CLASS_COLOURS[c % len(CLASS_COLOURS)], edgecolors="black", linewidths=0.4,
                       label=f"class {c}")
        for r in OOD_RADII:
            ax.plot(r * np.cos(ring), r * np.sin(ring), color="tab:gray", linestyle="--", linewidth=0.9,
                    label=f"OOD points, {OOD_RADII[0]:g} < |x| < {OOD_RADII[1]:g}"
                    if r == OOD_RADII[0] else None)
        ax.set_title(f"{titles[name]}\nOOD confidence {row['ood_confidence']:.2f}", fontsize=11)
        ax.set_aspect("equal")
    for ax in axes[1]:
        ax.set_xlabel("$x_1$")
    for ax in axes[:, 0]:
        ax.set_ylabel("$x_2$")
    axes[0, 0].legend(loc="upper left", fontsize=8, framealpha=0.8)
    cbar = fig.colorbar(image, ax=axes, shrink=0.9)
    cbar.set_label(r"confidence $\max_c\, p(c \mid x)$")
    fig.suptitle(f"Predictive confidence on {N_CLASSES}-class spirals "
                 "(training points overlaid; dark = uncertain)")
    fig.savefig(path, format="png", dpi=DPI)


def run(out=DEFAULT_OUT, seed=0, progress=True, stream=None):
    """Run the demo, print its report to ``stream`` (stdout) and write the PNG.

    Parameters
    ----------
    out : path or None
        Where to write the confidence maps (a ``.png`` name; FIGSIZE * DPI
        pixels); None skips the PNG. Without matplotlib the PNG is skipped
        with a message and ``out`` is not checked.
    seed : int >= 0
        Seeds the data, the initial weights and K-FAC's sampled targets: the
        same seed gives the same numbers (except the timings).
    progress : bool
        tqdm bars on stderr.

    Returns
    -------
    dict
        ``rows`` (one dict per method of METHODS: ``method``, ``posterior``,
        ``accuracy``, ``nll``, ``ece``, ``ood_confidence``, ``agreement``
        (fraction of test points where it predicts the MAP's class),
        ``prior_precision`` (None for the MAP), ``time`` (s), ``n_params``),
        ``train_time``, ``train_loss``, ``train_accuracy``, ``n_train``,
        ``n_test``, ``n_params``, ``data_radius``, ``train_data``, ``maps``
        (method -> (GRID, GRID) confidence on [-EXTENT, EXTENT]², rows along
        x₂) and ``out`` (absolute path of the PNG, or None).

    Raises
    ------
    DemoError
        ``out`` cannot be written (checked before the computation).
    """
    stream = sys.stdout if stream is None else stream
    if out is None:
        out_path, png_note = None, "No PNG requested."
    elif _matplotlib() is None:
        out_path, png_note = None, "matplotlib is not installed: skipped the PNG (pip install matplotlib)."
    else:
        out_path, png_note = check_out(out), None
    print(_intro(), file=stream, flush=True)
    print(file=stream, flush=True)
    with _blas_threads():
        res = compute(seed=seed, progress=progress, want_maps=out_path is not None)
    if out_path is not None:
        try:
            _plot(res, out_path)
        except OSError as exc:
            raise DemoError(f"--out: cannot write {out_path}: {exc.strerror or exc}") from None
    print(_report(res, out_path, png_note), file=stream, flush=True)
    res["out"] = out_path
    return res
