#!/usr/bin/env python3
"""Wall times of pk.Laplace per structure -- fit, marginal-likelihood tuning,
GLM predictive and sampling -- and, where torch and laplace-torch are
installed, the same steps in laplace-torch on the same weights and data.

    python benchmarks/bench_laplace.py                  # 784-256-256-10, N = 10000, float32 and float64
    python benchmarks/bench_laplace.py --quick          # a small smoke run (seconds)
    python benchmarks/bench_laplace.py --dtypes float64 --no-peers --json out.json

Problem: MLP 784-256-256-10 (tanh) at its seeded initialisation, X standard
normal (N x 784), y uniform class labels, softmax cross-entropy summed over the
data, fitted in batches of --batch rows; prior precision 1 (scalar).

Rows (structure, subset):
  kron / all         K-FAC (exact, KFLR) of every layer, eigendecomposed once
  diag / all         exact GGN diagonal
  full / last_layer  exact GGN of the last layer (D = 2570), Cholesky/eigh
  lowrank / all      Gmat Gmat^T, Gmat = per-sample Jacobians times S, on the
                     first --lowrank-n samples (M = n K columns), from the layer
                     factors (neither Gmat nor the Jacobians formed; D x r
                     eigenvectors in memory); no laplace-torch counterpart

laplace-torch runs with --peer-backend (default BackPACK's GGN, which for
these rows is much faster than its default curvlinops backend).

Columns: fit; marglik = optimize_prior_precision(method="marglik") (pykfac:
L-BFGS on log delta with exact gradients; laplace-torch: its default, 100
Adam steps through autograd); predictive = GLM probit on --n-test inputs;
sample = --samples parameter draws; peak = peak resident memory of the fit
(VmHWM after a reset, MiB, the whole process).

Peers: before timing laplace-torch, its log marginal likelihood and GLM
probit predictive at prior precision 1 are checked against pykfac's. They must
agree for diag and full/last_layer (the same exact GGN). laplace-torch's
Kronecker structure uses separate W and b blocks (curvlinops
``separate_weight_and_bias=True``) while pykfac uses one block per layer on
[W b] (CONVENTIONS.md), so for kron the LML and predictive are reported
side by side, not required to agree. laplace-torch's low-rank Laplace
approximates the Hessian (asdl), not the GGN, and is not compared.
"""
import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
if __name__ == "__main__":
    import _threads  # noqa: F401,E402 - sets the BLAS thread count before numpy loads

import numpy as np  # noqa: E402

import pykfac as pk  # noqa: E402
# optimize_prior_precision imports scipy.optimize on its first call (about
# 0.3 s, once per process): import it here so that no row's marglik pays it
import scipy.optimize  # noqa: F401,E402

ROWS = (("kron", "all"), ("diag", "all"), ("full", "last_layer"), ("lowrank", "all"))
TOL = {"float32": 2e-3, "float64": 1e-6}


def reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def peak_mib():
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


CLOCK = [time.perf_counter]


def timed(fn, repeats=1):
    """(median seconds, last result) over `repeats` calls (after gc)."""
    times, out = [], None
    for _ in range(repeats):
        gc.collect()
        t0 = CLOCK[0]()
        out = fn()
        times.append(CLOCK[0]() - t0)
    return statistics.median(times), out


def rel_err(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


# ---------------------------------------------------------------------------
# laplace-torch
# ---------------------------------------------------------------------------
def import_peer():
    """laplace-torch, or (None, reason). torchmetrics imports torchvision when it
    is installed; an incompatible torchvision is hidden from it here."""
    try:
        import lightning_utilities.core.imports as lui

        orig = lui.RequirementCache.__bool__

        def no_torchvision(self):
            if "torchvision" in str(getattr(self, "requirement", "")):
                return False
            return orig(self)

        lui.RequirementCache.__bool__ = no_torchvision
    except ImportError:
        pass
    try:
        import torch
        import laplace
    except Exception as exc:  # noqa: BLE001 - any import failure disables the peer
        return None, f"{type(exc).__name__}: {exc}"
    return (torch, laplace), ""


def torch_model(torch, net, dtype):
    layers = []
    for i, layer in enumerate(net.layers):
        lin = torch.nn.Linear(layer.in_features, layer.out_features)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(np.array(layer.W, dtype=np.float64)))
            lin.bias.copy_(torch.from_numpy(np.array(layer.b, dtype=np.float64)))
        layers.append(lin)
        if i < len(net.layers) - 1:
            layers.append(torch.nn.Tanh())
    model = torch.nn.Sequential(*layers)
    return model.to(torch.float32 if dtype == "float32" else torch.float64)


def run_peer(mods, net, X, y, Xt, structure, subset, dtype, args):
    torch, laplace = mods
    tdt = torch.float32 if dtype == "float32" else torch.float64
    model = torch_model(torch, net, dtype)
    Xtr = torch.from_numpy(np.asarray(X)).to(tdt)
    ytr = torch.from_numpy(np.asarray(y))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(Xtr, ytr), batch_size=args.batch)
    Xte = torch.from_numpy(np.asarray(Xt)).to(tdt)
    res = {}
    kw = {}
    if args.peer_backend == "backpack":
        from laplace.curvature import BackPackGGN

        kw["backend"] = BackPackGGN
    elif args.peer_backend == "curvlinops":
        from laplace.curvature import CurvlinopsGGN

        kw["backend"] = CurvlinopsGGN
    la = laplace.Laplace(model, "classification", subset_of_weights=subset, hessian_structure=structure,
                         prior_precision=1.0, **kw)
    reset_peak()
    res["fit"], _ = timed(lambda: la.fit(loader))
    res["peak_MiB"] = peak_mib()
    def predict():
        # in batches of --pred-batch inputs, as with a DataLoader: laplace-torch forms
        # the Jacobians of a whole batch at once (B x K x D values)
        return torch.cat([la(Xte[i:i + args.pred_batch], pred_type="glm", link_approx="probit")
                          for i in range(0, Xte.shape[0], args.pred_batch)])

    with torch.no_grad():
        res["lml"] = float(la.log_marginal_likelihood(prior_precision=torch.tensor(1.0, dtype=tdt)))
    res["predictive"], probs = timed(predict)
    res["probs"] = probs.detach().double().numpy()
    # sampling is cheap for both libraries: the same median of --repeats calls
    res["sample"], _ = timed(lambda: la.sample(args.samples), args.repeats)
    res["marglik"], _ = timed(lambda: la.optimize_prior_precision(method="marglik", pred_type="glm"))
    return res


# ---------------------------------------------------------------------------
# pykfac
# ---------------------------------------------------------------------------
def run_pykfac(net, batches, X, y, Xt, structure, subset, args):
    res = {}
    if structure == "lowrank":
        data = [(X[:args.lowrank_n], y[:args.lowrank_n])]
    else:
        data = batches
    la = pk.Laplace(net, "classification", structure, subset, prior_precision=1.0)
    reset_peak()
    res["fit"], _ = timed(lambda: la.fit(data))
    res["peak_MiB"] = peak_mib()
    res["lml"] = la.log_marginal_likelihood(prior_precision=1.0)
    res["predictive"], probs = timed(lambda: la.predictive(Xt), args.repeats)
    res["probs"] = probs
    res["sample"], _ = timed(lambda: la.sample(args.samples, seed=0), args.repeats)
    res["marglik"], _ = timed(lambda: la.optimize_prior_precision(method="marglik"))
    res["prior_opt"] = la.prior_precision
    res["D"] = la.n_params
    return res


def fmt(t):
    if t is None or t != t:
        return "-"
    return f"{t * 1e3:.1f} ms" if t < 1 else f"{t:.2f} s"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small configuration for a smoke run")
    ap.add_argument("--net", default=None, help="widths (default 784,256,256,10)")
    ap.add_argument("--n", type=int, default=None, help="training samples (default 10000)")
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--n-test", type=int, default=None, help="predictive inputs (default 1000)")
    ap.add_argument("--samples", type=int, default=100, help="posterior draws timed")
    ap.add_argument("--pred-batch", type=int, default=50,
                    help="test inputs per laplace-torch predictive call (its Jacobians: B x K x D)")
    ap.add_argument("--lowrank-n", type=int, default=None, help="samples for the low-rank row (default 50)")
    ap.add_argument("--dtypes", default="float32,float64")
    ap.add_argument("--rows", default=",".join(f"{s}/{u}" for s, u in ROWS))
    ap.add_argument("--repeats", type=int, default=5,
                    help="timed calls of sample (both libraries) and of pykfac's predictive; the "
                         "median is reported (a fresh 100 x D draw now and then stalls on page faults)")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--peer-backend", default="backpack", choices=("backpack", "curvlinops", "default"),
                    help="laplace-torch curvature backend (BackPACK is its fastest for these rows)")
    ap.add_argument("--threads", type=int, default=None,
                    help="BLAS/OpenMP threads for pykfac and torch (default: all cores)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="cpu: time.process_time, robust on a loaded machine; meaningful "
                         "only with --threads 1 (idle BLAS threads spin)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.clock == "cpu":
        CLOCK[0] = time.process_time
        if args.threads != 1:
            print("warning: --clock cpu adds up the CPU time of all threads; use it with --threads 1",
                  file=sys.stderr)
    if args.quick:
        args.net = args.net or "64,32,32,10"
        args.n = args.n or 500
        args.n_test = args.n_test or 100
        args.lowrank_n = args.lowrank_n or 20
        args.batch = min(args.batch, 250)
    sizes = [int(s) for s in (args.net or "784,256,256,10").split(",")]
    N = args.n or 10000
    n_test = args.n_test or 1000
    args.lowrank_n = args.lowrank_n or 50
    rows = [tuple(r.split("/")) for r in args.rows.split(",")]

    peer, why = (None, "disabled (--no-peers)") if args.no_peers else import_peer()
    cfg = pk.show_config(print_out=False)
    print(f"pykfac {cfg['version']}  BLAS: {cfg['blas_corename']} x{cfg['blas_threads']}  "
          f"numpy {cfg['numpy']}  python {platform.python_version()}  cpus {os.cpu_count()}")
    if peer:
        torch, laplace = peer
        if args.threads:
            torch.set_num_threads(args.threads)
        warnings.filterwarnings("ignore", message=".*[Ff]ull backward hook.*")
        import importlib.metadata as md
        print(f"laplace-torch {md.version('laplace-torch')}  torch {torch.__version__} "
              f"({torch.get_num_threads()} threads), backend {args.peer_backend}")
    else:
        print(f"laplace-torch: not compared ({why})")
    clock = "wall-clock" if args.clock == "wall" else "CPU-time (time.process_time)"
    print(f"net {sizes}, N = {N} (batches of {args.batch}), {n_test} test inputs, "
          f"{args.samples} samples, lowrank on {args.lowrank_n} samples; {clock} seconds\n")

    rng = np.random.default_rng(0)
    X64 = rng.standard_normal((N, sizes[0]))
    y = rng.integers(0, sizes[-1], size=N).astype(np.int64)
    Xt64 = rng.standard_normal((n_test, sizes[0]))
    results, failures = [], []
    for dtype in args.dtypes.split(","):
        npdt = np.dtype(dtype)
        net = pk.MLP(sizes, activation="tanh", dtype=npdt, seed=0)
        X, Xt = X64.astype(npdt), Xt64.astype(npdt)
        batches = [(X[i:i + args.batch], y[i:i + args.batch]) for i in range(0, N, args.batch)]
        for structure, subset in rows:
            r = run_pykfac(net, batches, X, y, Xt, structure, subset, args)
            row = {"dtype": dtype, "structure": structure, "subset": subset, "D": r["D"],
                   "pykfac": {k: v for k, v in r.items() if k != "probs"}}
            if peer and structure != "lowrank":
                try:
                    p = run_peer(peer, net, X, y, Xt, structure, subset, dtype, args)
                except Exception as exc:  # noqa: BLE001
                    row["peer_error"] = f"{type(exc).__name__}: {exc}"
                    p = None
                if p is not None:
                    row["peer"] = {k: v for k, v in p.items() if k != "probs"}
                    row["lml_rel_err"] = abs(r["lml"] - p["lml"]) / abs(p["lml"])
                    row["probs_max_abs_err"] = float(np.max(np.abs(r["probs"] - p["probs"])))
                    must = structure != "kron"
                    ok = row["lml_rel_err"] < TOL[dtype] and row["probs_max_abs_err"] < 10 * TOL[dtype]
                    row["agree"] = ok
                    if must and not ok:
                        failures.append(f"{dtype} {structure}/{subset}: LML rel err "
                                        f"{row['lml_rel_err']:.2e}, probs err {row['probs_max_abs_err']:.2e}")
            results.append(row)
            print_row(row)
    if failures:
        print("\nDISAGREEMENT with laplace-torch:\n  " + "\n  ".join(failures))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"sizes": sizes, "N": N, "n_test": n_test, "clock": args.clock,
                       "threads": args.threads, "rows": results}, fh, indent=1, default=float)
    return 1 if failures else 0


def print_row(row):
    r = row["pykfac"]
    head = f"{row['dtype']:8s} {row['structure'] + '/' + row['subset']:18s} D={row['D']:<7d}"
    cols = ("fit", "marglik", "predictive", "sample")
    print(head + "  pykfac     " + "  ".join(f"{c} {fmt(r[c]):>9s}" for c in cols)
          + f"  peak {r['peak_MiB']:.0f} MiB  LML {r['lml']:.6g}")
    if "peer" in row:
        p = row["peer"]
        print(" " * len(head) + "  laplace-t  " + "  ".join(f"{c} {fmt(p[c]):>9s}" for c in cols)
              + f"  peak {p['peak_MiB']:.0f} MiB  LML {p['lml']:.6g}")
        ratio = "  ".join(f"{c} {p[c] / r[c]:8.1f}x" for c in cols)
        agree = "agree" if row["agree"] else ("differ (different K-FAC blocks)" if row["structure"] == "kron"
                                              else "DISAGREE")
        print(" " * len(head) + "  speedup    " + ratio
              + f"  [LML rel {row['lml_rel_err']:.1e}, probs {row['probs_max_abs_err']:.1e}: {agree}]")
    elif "peer_error" in row:
        print(" " * len(head) + f"  laplace-torch failed: {row['peer_error']}")


if __name__ == "__main__":
    sys.exit(main())
