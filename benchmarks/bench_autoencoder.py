#!/usr/bin/env python3
"""K-FAC against SGD-momentum and Adam on a deep autoencoder (issue 4's headline).

    python benchmarks/bench_autoencoder.py              # full run (tens of minutes on 2 cores)
    python benchmarks/bench_autoencoder.py --quick      # smoke run (about a minute)

Problem: scikit-learn's digits (1797 images of 8 x 8 pixels, scaled to [0, 1]),
reconstructed by the autoencoder 64-256-128-64-16-64-128-256-64 (tanh hidden
units, linear output) with pykfac's "mse" loss, ½‖x − f(x)‖² per image; every
optimiser minimises the minibatch MEAN of it (pk.optim's objective h, no
weight decay for the first-order methods, K-FAC's default η = 1e-5). All runs
start from the same initial weights (pk.MLP(..., seed=0)), use minibatches of
--batch rows reshuffled every epoch, and record the FULL training loss (mean
over the 1797 images) every few steps; its evaluation is not timed.

Optimisers (each with pk.optim defaults unless stated):
  K-FAC blockdiag   KFAC(curvature="mc", structure="blockdiag")
  K-FAC tridiag     KFAC(curvature="mc", structure="tridiag")
  KFLR              KFAC(curvature="exact")       (Botev et al.'s KFLR)
  KFRA              KFAC(curvature="kfra")
  SGD-momentum      SGD(momentum=0.9, nesterov=True), lr from --sgd-lrs
  Adam              Adam(betas=(0.9, 0.999)), lr from --adam-lrs
The K-FAC variants choose α and μ by the quadratic model (lr=None,
momentum=None), adapt the damping, and estimate their curvature statistics
from --stats-batch (128) random rows of each batch (stats_batch); the gradient
and the quadratic model use the whole batch.

Tuning, one knob per optimiser, each value run once (seed 0) for the method's
full budget, the value with the lowest final training loss kept: SGD's lr
(--sgd-lrs), Adam's lr (--adam-lrs), K-FAC's initial damping λ0
(--kfac-dampings, tuned on K-FAC blockdiag and reused by the other K-FAC
variants; the issue's default 150 is the paper's value for a summed
784-output Bernoulli loss, far too large for this loss scale).
Target: the final training loss of the tuned SGD-momentum run (the paper's
"reached SGD-momentum's loss in 14.7x fewer updates"), or --target.
Then each optimiser runs --repeats times (seeds 0, 1, ...: shuffling and MC
targets differ; the initial weights do not); the table reports the MEDIAN
iterations and seconds to the first evaluation at or below the target (a
run that never gets there counts as missing), the seconds being the
cumulative time spent in opt.step, both wall-clock and process CPU time
(pk.train's "time" and "cpu_time"). Wall-clock on a shared machine is
noisy (other jobs take the cores): the load average is printed at the start
and the end, and the CPU seconds are the more robust comparison.

Where PyTorch is installed, one K-FAC step (MC statistics, gradient,
eigendecomposition-based damped block-diagonal inverse, preconditioned
update) is also timed against a reference written here in PyTorch on the same
network and batch, and the ratio printed.

Outputs: a table on stdout, a PNG (loss vs iterations and vs seconds) and a
JSON with every curve, in --outdir (default benchmarks/results/).
"""
import argparse
import json
import os
import sys
import time


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny budgets, one repeat, no tuning grid")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--first-order-steps", type=int, default=3000)
    p.add_argument("--kfac-steps", type=int, default=400)
    p.add_argument("--kflr-steps", type=int, default=200)
    p.add_argument("--sgd-lrs", default="0.03,0.05,0.07,0.1")
    p.add_argument("--adam-lrs", default="0.001,0.003,0.01")
    p.add_argument("--kfac-dampings", default="1,0.1,0.01",
                   help="grid for K-FAC's initial damping (tuned on K-FAC blockdiag)")
    p.add_argument("--stats-batch", type=int, default=128,
                   help="rows of each batch used for K-FAC's curvature statistics (0: all)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--target", type=float, default=None)
    p.add_argument("--threads", type=int, default=1,
                   help="BLAS threads for every optimiser (set before pykfac is imported)")
    p.add_argument("--activation", default="tanh")
    p.add_argument("--methods", default="kfac,kfac_tri,kflr,kfra,sgd,adam")
    p.add_argument("--outdir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    p.add_argument("--no-torch", action="store_true")
    a = p.parse_args()
    if a.quick:
        a.first_order_steps, a.kfac_steps, a.kflr_steps, a.repeats = 300, 60, 30, 1
        a.sgd_lrs, a.adam_lrs, a.kfac_dampings = "0.07", "0.003", "0.01"
    return a


ARGS = parse_args()
os.environ["OPENBLAS_NUM_THREADS"] = str(ARGS.threads)
os.environ.setdefault("OMP_NUM_THREADS", str(ARGS.threads))

import numpy as np  # noqa: E402

import pykfac as pk  # noqa: E402

SIZES = [64, 256, 128, 64, 16, 64, 128, 256, 64]
KFAC_METHODS = ("kfac", "kfac_tri", "kflr", "kfra")
LABELS = {"kfac": "K-FAC blockdiag", "kfac_tri": "K-FAC tridiag", "kflr": "KFLR (K-FAC exact)",
          "kfra": "KFRA", "sgd": "SGD-momentum", "adam": "Adam"}


def load_data():
    from sklearn.datasets import load_digits

    X = load_digits().data.astype(np.float64) / 16.0
    return X


def make_opt(method, net, lr=None, seed=0):
    """lr: the learning rate of SGD / Adam, the initial damping of the K-FAC variants."""
    if method == "sgd":
        return pk.optim.SGD(net, "mse", lr, momentum=0.9, nesterov=True)
    if method == "adam":
        return pk.optim.Adam(net, "mse", lr)
    kw = dict(damping=lr, seed=seed, stats_batch=ARGS.stats_batch or None)
    if method == "kfac":
        return pk.optim.KFAC(net, "mse", **kw)
    if method == "kfac_tri":
        return pk.optim.KFAC(net, "mse", structure="tridiag", **kw)
    if method == "kflr":
        return pk.optim.KFAC(net, "mse", curvature="exact", **kw)
    if method == "kfra":
        return pk.optim.KFAC(net, "mse", curvature="kfra", **kw)
    raise ValueError(method)


def budget(method):
    if method in ("sgd", "adam"):
        return ARGS.first_order_steps
    return ARGS.kflr_steps if method == "kflr" else ARGS.kfac_steps


def run(method, X, lr=None, seed=0):
    """One training run; returns the evaluation curve (step, seconds, full loss)."""
    net = pk.MLP(SIZES, activation=ARGS.activation, seed=0)
    opt = make_opt(method, net, lr=lr, seed=seed)
    steps = budget(method)
    every = max(1, steps // 300)
    curve = [(0, pk.loss(net, X, X, "mse") / len(X))]

    def callback(i, value):
        if i % every == 0 or i == steps:
            curve.append((i, pk.loss(net, X, X, "mse") / len(X)))
        return False

    try:
        hist = pk.train(net, opt, (X, X), epochs=10 ** 9, batch_size=ARGS.batch, seed=seed,
                        max_steps=steps, progress=False, callback=callback)
    except FloatingPointError:
        return {"method": method, "lr": lr, "seed": seed, "diverged": True,
                "curve": [(i, np.nan, np.nan, v) for i, v in curve]}
    wall, cpu = hist["time"], hist["cpu_time"]
    curve = [(i, 0.0 if i == 0 else float(wall[i - 1]), 0.0 if i == 0 else float(cpu[i - 1]), float(v))
             for i, v in curve]
    return {"method": method, "lr": lr, "seed": seed, "diverged": False, "curve": curve,
            "ms_per_step": 1e3 * float(wall[-1]) / len(wall),
            "cpu_ms_per_step": 1e3 * float(cpu[-1]) / len(cpu)}


def reach(curve, target):
    """(iterations, wall seconds, CPU seconds) at the first evaluation <= target."""
    for i, t, c, v in curve:
        if v <= target:
            return i, t, c
    return None, None, None


def final_loss(r):
    return np.inf if r["diverged"] else r["curve"][-1][3]


def loadavg():
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


# ---- PyTorch reference K-FAC step -------------------------------------------------
def torch_step_ratio(X, batch, repeats=7):
    """Median seconds of one K-FAC step with an inverse refresh (MC statistics,
    gradient, eigendecompositions, damped block-diagonal preconditioning, update)
    in pykfac and in a PyTorch reference written here."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(ARGS.threads)
    Xb = X[:batch]
    net = pk.MLP(SIZES, activation=ARGS.activation, seed=0)
    opt = pk.optim.KFAC(net, "mse", lr=0.1, momentum=0.0, damping=1.0, inverse_every=1,
                        adapt_damping=False, seed=0)
    opt.step(Xb, Xb)
    t_pk = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        opt.step(Xb, Xb)
        t_pk.append(time.perf_counter() - t0)

    # the same network in PyTorch (float64)
    layers = []
    for l in net.layers:
        lin = torch.nn.Linear(l.in_features, l.out_features).double()
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(l.W))
            lin.bias.copy_(torch.from_numpy(l.b))
        layers.append(lin)
    act = {"tanh": torch.tanh, "sigmoid": torch.sigmoid}[ARGS.activation]
    Xt = torch.from_numpy(Xb)
    N = Xt.shape[0]
    gen = torch.Generator().manual_seed(0)

    def forward(keep):
        a, acts, pre = Xt, [], []
        for i, lin in enumerate(layers):
            acts.append(a)
            s = lin(a)
            if keep:
                s.retain_grad()
            pre.append(s)
            a = act(s) if i < len(layers) - 1 else s
        return a, acts, pre

    def torch_step(gamma=1.0, lr=0.1):
        # gradient of the mean loss
        for lin in layers:
            lin.zero_grad()
        out, acts, pre = forward(False)
        (0.5 * ((out - Xt) ** 2).sum() / N).backward()
        grads = [(lin.weight.grad.clone(), lin.bias.grad.clone()) for lin in layers]
        # MC statistics: targets from the predictive N(f, I)
        out, acts, pre = forward(True)
        with torch.no_grad():
            ysamp = out + torch.randn(out.shape, generator=gen, dtype=out.dtype)
        (0.5 * ((out - ysamp) ** 2).sum()).backward()
        with torch.no_grad():
            for i, lin in enumerate(layers):
                abar = torch.cat([acts[i], torch.ones(N, 1, dtype=Xt.dtype)], dim=1)
                A = abar.T @ abar / N
                g = pre[i].grad
                G = g.T @ g / N
                pi = torch.sqrt((torch.trace(A) / A.shape[0]) / (torch.trace(G) / G.shape[0]))
                wA, QA = torch.linalg.eigh(A + gamma * pi * torch.eye(A.shape[0], dtype=A.dtype))
                wG, QG = torch.linalg.eigh(G + gamma / pi * torch.eye(G.shape[0], dtype=G.dtype))
                gW, gb = grads[i]
                V = torch.cat([gW, gb[:, None]], dim=1)
                V = QG @ ((QG.T @ V @ QA) / (wG[:, None] * wA[None, :])) @ QA.T
                lin.weight -= lr * V[:, :-1]
                lin.bias -= lr * V[:, -1]

    torch_step()
    t_torch = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch_step()
        t_torch.append(time.perf_counter() - t0)
    return float(np.median(t_pk)), float(np.median(t_torch)), torch.__version__


# ---- main -------------------------------------------------------------------------
def main():
    X = load_data()
    methods = [m.strip() for m in ARGS.methods.split(",") if m.strip()]
    print(f"pykfac {pk.__version__}; digits {X.shape}; net {'-'.join(map(str, SIZES))} "
          f"{ARGS.activation}; batch {ARGS.batch}; BLAS threads {ARGS.threads}; load avg {loadavg()}")
    results = {"args": vars(ARGS), "tuning": {}, "runs": {}}

    # tuning: SGD's and Adam's lr, K-FAC's initial damping (on blockdiag, reused by all variants)
    best_lr = {}
    for method, grid in (("sgd", ARGS.sgd_lrs), ("adam", ARGS.adam_lrs), ("kfac", ARGS.kfac_dampings)):
        if method not in methods and not (method == "kfac" and any(m in methods for m in KFAC_METHODS)):
            continue
        lrs = [float(v) for v in grid.split(",")]
        rows = []
        for lr in lrs:
            r = run(method, X, lr=lr, seed=0)
            rows.append(r)
            status = "diverged" if r["diverged"] else f"final loss {final_loss(r):.4f}"
            knob = "damping" if method == "kfac" else "lr"
            print(f"  tune {LABELS[method]:<16s} {knob}={lr:<7g} {status}", flush=True)
        best = min(rows, key=final_loss)
        best_lr[method] = best["lr"]
        results["tuning"][method] = [{"value": r["lr"], "final": final_loss(r)} for r in rows]
        if method in methods:
            results["runs"].setdefault(method, []).append(best)
    for m in KFAC_METHODS:
        if "kfac" in best_lr:
            best_lr.setdefault(m, best_lr["kfac"])

    target = ARGS.target
    if target is None:
        if "sgd" in results["runs"]:
            target = final_loss(results["runs"]["sgd"][0])
        else:
            target = 0.2
    print(f"target training loss: {target:.4f}"
          + (" (final loss of the tuned SGD-momentum)" if ARGS.target is None and "sgd" in methods else ""))

    # repeats
    for method in methods:
        have = results["runs"].setdefault(method, [])
        for seed in range(ARGS.repeats):
            if any(r["seed"] == seed for r in have):
                continue
            r = run(method, X, lr=best_lr.get(method), seed=seed)
            have.append(r)
            i, t, c = reach(r["curve"], target)
            print(f"  {LABELS[method]:<20s} seed {seed}: final {final_loss(r):.4f}, "
                  f"to target: {i if i is not None else '-'} it, "
                  f"{'%.2f s' % t if t is not None else '-'} ({'%.2f' % c if c is not None else '-'} CPU s), "
                  f"{r.get('ms_per_step', float('nan')):.1f} ms/step", flush=True)

    # table
    print()
    print(f"{'optimiser':<20s} {'lr/λ0':>7s} {'iters':>7s} {'wall s':>7s} {'CPU s':>7s} "
          f"{'ms/step':>8s} {'final':>7s} {'reached':>8s}")
    summary = {}

    def med(vals):
        vals = [v for v in vals if v is not None]
        return (float(np.median(vals)) if vals else None), len(vals)

    for method in methods:
        rs = results["runs"][method]
        hits = [reach(r["curve"], target) for r in rs]
        med_i, n_ok = med([h[0] for h in hits])
        med_t, _ = med([h[1] for h in hits])
        med_c, _ = med([h[2] for h in hits])
        ok = [r for r in rs if not r["diverged"]]
        ms = float(np.median([r["ms_per_step"] for r in ok])) if ok else float("nan")
        fin = float(np.median([final_loss(r) for r in rs]))
        summary[method] = {"iters": med_i, "seconds": med_t, "cpu_seconds": med_c, "ms_per_step": ms,
                           "final": fin, "reached": f"{n_ok}/{len(rs)}", "lr": best_lr.get(method)}
        lr_s = f"{best_lr[method]:g}" if method in best_lr else "-"

        def f(v, fmt):
            return fmt % v if v is not None else "-"

        print(f"{LABELS[method]:<20s} {lr_s:>7s} {f(med_i, '%.0f'):>7s} {f(med_t, '%.2f'):>7s} "
              f"{f(med_c, '%.2f'):>7s} {ms:8.1f} {fin:7.4f} {summary[method]['reached']:>8s}")
    results["summary"] = summary
    results["target"] = target
    ref = summary.get("sgd")
    if ref and ref["iters"] and ref["seconds"]:
        print()
        for method in methods:
            s = summary[method]
            if method == "sgd" or not s["iters"]:
                continue
            ad = summary.get("adam", {})
            print(f"{LABELS[method]:<20s} vs SGD-momentum: {ref['iters'] / s['iters']:.1f}x fewer iterations, "
                  f"{ref['seconds'] / s['seconds']:.1f}x less wall time "
                  f"({ref['cpu_seconds'] / s['cpu_seconds']:.1f}x CPU)"
                  + (f"; vs Adam: {ad['iters'] / s['iters']:.1f}x fewer iterations, "
                     f"{ad['seconds'] / s['seconds']:.1f}x less wall time "
                     f"({ad['cpu_seconds'] / s['cpu_seconds']:.1f}x CPU)"
                     if method != "adam" and ad.get("seconds") else ""))

    if not ARGS.no_torch:
        tr = torch_step_ratio(X, ARGS.batch)
        if tr is None:
            print("\nPyTorch not installed: no K-FAC step comparison")
        else:
            t_pk, t_torch, ver = tr
            results["torch_step"] = {"pykfac_s": t_pk, "torch_s": t_torch, "torch": ver}
            print(f"\none K-FAC step with inverse refresh (batch {ARGS.batch}): pykfac {1e3 * t_pk:.1f} ms, "
                  f"PyTorch {ver} reference {1e3 * t_torch:.1f} ms -> ratio torch/pykfac {t_torch / t_pk:.2f}")
    print(f"load avg at the end: {loadavg()}")

    os.makedirs(ARGS.outdir, exist_ok=True)
    stem = os.path.join(ARGS.outdir, "autoencoder" + ("_quick" if ARGS.quick else ""))
    with open(stem + ".json", "w") as f:
        json.dump(results, f, indent=1, default=float)
    plot(results, methods, target, stem + ".png")
    print(f"wrote {stem}.png and {stem}.json")


def plot(results, methods, target, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for method in methods:
        rs = [r for r in results["runs"][method] if not r["diverged"]]
        if not rs:
            continue
        r = sorted(rs, key=final_loss)[len(rs) // 2]   # the median run by final loss
        c = np.array(r["curve"])[:, [0, 1, 3]]
        knob = "λ0" if method in KFAC_METHODS else "lr"
        lab = LABELS[method] + (f" ({knob} {r['lr']:g})" if r["lr"] is not None else "")
        axes[0].plot(np.maximum(c[:, 0], 1), c[:, 2], label=lab)
        axes[1].plot(np.maximum(c[:, 1], 1e-3), c[:, 2], label=lab)
    for ax, xl in zip(axes, ("iterations", "seconds (time in opt.step)")):
        ax.axhline(target, color="k", ls=":", lw=1, label="target")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xl)
        ax.set_ylabel("training loss (mean ½‖x − f(x)‖²)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"digits autoencoder {'-'.join(map(str, SIZES))} ({ARGS.activation}), batch {ARGS.batch}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
