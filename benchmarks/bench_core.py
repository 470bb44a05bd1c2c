#!/usr/bin/env python3
"""Wall times and FLOP rates of pykfac's core MLP kernels, against the machine's
GEMM rate and (when installed) the PyTorch peers.

    python benchmarks/bench_core.py                      # full: N = 1024, 8192; float32, float64
    python benchmarks/bench_core.py --quick              # a tiny smoke run (seconds)
    python benchmarks/bench_core.py --sizes 1024 --dtypes float32 --no-peers --json out.json

Network: MLP 784-512-512-10, tanh, softmax cross-entropy summed over the data;
X standard normal, y uniform class labels; v standard normal for the GGN
product. pykfac and every peer see the same weights and the same data.

Timing: one warm-up call each, then the median of --repeats calls (7; 3 for
calls whose warm-up took longer than --slow seconds). Each peer's warm-up
result is first checked against pykfac's (max |a - b| / max |b|, see
``agreement``); a peer that disagrees is reported and not timed, and the script
exits with status 1. pykfac and the agreeing peers of a row are then timed in
turns (round-robin, a short pause before each call so the other library's
spinning BLAS threads go to sleep), so a change in the machine's load hits
them alike.

FLOP counts (analytic; the minimal dense work of the standard algorithm).
Layer l maps in_l -> out_l; K = out of the last layer; N samples;
P = sum_l in_l * out_l (weights); P1 = the same sum over layers l >= 1 (the
input gradients of layer 0 are never needed); syrk(n, k) = k * n * (n + 1)
(the FLOPs of one SYRK C (n x n) += A A^T with A n x k). Bias additions,
activations, softmax and other O(N * width) work are not counted.

  fwd_bwd     forward 2NP + weight gradients 2NP + input gradients 2N*P1
              = 4NP + 2N*P1
  jacobian    forward 2NP + K backward passes 2NK*P1 + the outer products
              g a^T written into J: NK*P   (N*K*D values: memory-bound, the
              output alone is N*K*D*itemsize bytes; GB/s is also printed)
  ggn_mv      forward 2NP + JVP (2NP + 2N*P1) + VJP (2NP + 2N*P1)
              = 6NP + 4N*P1
  kfac_exact  forward 2NP + A factors sum_l syrk(in_l + 1, N)
              + K backward passes of the columns of S, 2NK*P1
              + G factors sum_l syrk(out_l, N*K)
  kfac_mc     as kfac_exact with S = mc_samples (1 here) sampled backward
              passes instead of K: 2NP + sum_l syrk(in_l + 1, N) + 2NS*P1
              + sum_l syrk(out_l, N*S)
  diag_ggn    forward 2NP + K backward passes 2NK*P1 + the diagonal
              sum_n (sum_k g_nk^2) (a_n^2)^T, one GEMM per layer, 2NP
              = 4NP + 2NK*P1
  diag_mc     as diag_ggn with S = 1 sampled backward pass: 4NP + 2NS*P1
  diag_hess   diag_ggn + the gradient pass 2N*P1 + per curved hidden layer
              m >= 1 the GEMM with W_m o W_m, 2N*in_m*out_m, + per curved
              hidden layer m >= 2 its out_m-row residual stack pushed through
              layers m-1 .. 1, 2N*out_m*sum_{1<=l<m} in_l*out_l
              (pykfac's algorithm, pk.diag_hessian; BackPACK's DiagHessian
              does more work -- a width x width residual factor per sample
              and hidden layer -- that the count does not credit it with)
  ekfac       kfac_exact + the second pass: forward 2NP + K backward passes
              2NK*P1 + per layer the output-gradient columns U = S^T G
              (2N(K-1)K*out), their rotation U Q_G (2N(K-1)out^2), A Q_A
              (2N q^2) and the corrected eigenvalues (2N out q), q = in + 1
              (the factors' eigendecompositions are not counted; compared
              with curvlinops' EKFACLinearOperator through products with
              three fixed vectors)

Matrix-free stochastic tools on the exact Hessian (pk.HessianOperator, the sum
of the per-sample CE Hessians), against curvlinops on its HessianLinearOperator:

  slq         pk.spectral_density (stochastic Lanczos quadrature) vs curvlinops'
              lanczos_approximate_spectrum: --slq-repeats runs of --slq-steps
              products (curvlinops' ncv), the same grid (both get the same
              boundaries, so curvlinops runs no eigsh, and margin=0 on its side;
              1024 points) and the same Gaussian width (curvlinops' kappa = 3,
              sigma = width / ((ncv - 1) sqrt(8 ln kappa)), is pykfac's kappa =
              (num_points - 1) / ((ncv - 1) sqrt(8 ln 3)) grid spacings)
  xtrace      pk.trace_estimate(op, m, method="xtrace") vs curvlinops.xtrace(H, m)
  xdiag       pk.diag_estimate(op, m, method="xdiag") vs curvlinops.xdiag(H, m)
              (m = --matvecs products: m/2 sign vectors, then A Q)

These rows do the same number of Hessian-vector products in both libraries and
their time is mostly those products, so no FLOP count: the rows print the time
of one product in each library (single vectors for slq, blocks of m/2 for
xtrace/xdiag, as the tools use them) and the share of the call it explains.
Agreement (see stoch_setup, check_stoch_peer, stoch_check): the randomness is
made equal -- curvlinops draws pykfac's start or sign vectors (its module-level
sampler is replaced during its warm-up call) -- and the results must agree to
TOL; then statistically, with each library's own random vectors, against the
exact trace and diagonal (pk.diag_hessian at the benchmark size; the dense
Hessian of a small net fed to both as the same matrix), and for slq the first
moment of each density against the mean Rayleigh quotient of its start vectors.

For 784-512-512-10 (P = 668,672, P1 = 267,264, K = 10) that is per sample:
fwd_bwd 3.21 MFLOP, ggn_mv 5.08 MFLOP, kfac_exact 13.08 MFLOP, kfac_mc 3.54 MFLOP,
diag_ggn 8.02 MFLOP, diag_mc 3.21 MFLOP, diag_hess 9.08 MFLOP; the jacobian 13.37 MFLOP.

GEMM rate: a square n x n x n GEMM (--gemm-n, 4096) through pykfac's OWN
OpenBLAS (ctypes on the library pykfac._core loaded; its cblas_?gemm), the
reference for the %GEMM column; numpy's matmul (numpy ships a different
OpenBLAS build) and torch's matmul (MKL in the CPU wheels) are printed too.
"""
import argparse
import contextlib
import ctypes
import gc
import io
import json
import os
import platform
import statistics
import sys
import time
import warnings


HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
if __name__ == "__main__":
    import _threads  # noqa: F401,E402 - sets the BLAS thread count before numpy loads

import numpy as np  # noqa: E402

KERNELS = ("fwd_bwd", "jacobian", "ggn_mv", "kfac_exact", "kfac_mc", "diag_ggn", "diag_mc", "diag_hess",
           "ekfac", "slq", "xtrace", "xdiag")
MC_KERNELS = ("kfac_mc", "diag_mc")
STOCH_KERNELS = ("slq", "xtrace", "xdiag")  # matrix-free, random: Hessian-vector products
LABEL = {"fwd_bwd": "fwd+bwd", "jacobian": "jacobian", "ggn_mv": "GGN matvec",
         "kfac_exact": "K-FAC exact", "kfac_mc": "K-FAC MC", "diag_ggn": "diag GGN",
         "diag_mc": "diag GGN MC", "diag_hess": "diag Hessian", "ekfac": "EKFAC",
         "slq": "SLQ density", "xtrace": "XTrace", "xdiag": "XDiag"}
# tolerance of max|a - b| / max|b| per dtype when checking peers
TOL = {"float32": 2e-3, "float64": 1e-8}
KFAC_GEMM_GOAL = 0.5   # K-FAC factor build at >= 50% of the GEMM rate
PEER_RATIO_GOAL = 2.0  # pykfac >= 2x faster than the fastest peer


# ---------------------------------------------------------------------------
# FLOP counts (see the module docstring)
def syrk_flops(n, k):
    return k * n * (n + 1)


def flop_count(kernel, sizes, N, mc_samples=1):
    ins, outs = sizes[:-1], sizes[1:]
    K = sizes[-1]
    P = sum(i * o for i, o in zip(ins, outs))
    P1 = sum(i * o for i, o in zip(ins[1:], outs[1:]))
    fwd = 2 * N * P
    A = sum(syrk_flops(i + 1, N) for i in ins)
    if kernel == "fwd_bwd":
        return fwd + 2 * N * P + 2 * N * P1
    if kernel == "jacobian":
        return fwd + 2 * N * K * P1 + N * K * P
    if kernel == "ggn_mv":
        return 6 * N * P + 4 * N * P1
    if kernel == "kfac_exact":
        return fwd + A + 2 * N * K * P1 + sum(syrk_flops(o, N * K) for o in outs)
    if kernel == "kfac_mc":
        S = mc_samples
        return fwd + A + 2 * N * S * P1 + sum(syrk_flops(o, N * S) for o in outs)
    if kernel == "diag_ggn":
        return 4 * N * P + 2 * N * K * P1
    if kernel == "diag_mc":
        return 4 * N * P + 2 * N * mc_samples * P1
    if kernel == "ekfac":
        second = 2 * N * P + 2 * N * K * P1 + sum(2 * N * (K - 1) * K * o + 2 * N * (K - 1) * o * o
                                                  + 2 * N * (i + 1) ** 2 + 2 * N * o * (i + 1)
                                                  for i, o in zip(ins, outs))
        return flop_count("kfac_exact", sizes, N) + second
    if kernel == "diag_hess":  # every hidden activation curved (tanh)
        hidden = range(1, len(sizes) - 2)  # hidden layers m >= 1 (layer m maps in_m -> out_m)
        stack = sum(outs[m] * sum(ins[l] * outs[l] for l in range(1, m)) for m in hidden if m >= 2)
        return 4 * N * P + 2 * N * K * P1 + 2 * N * P1 + 2 * N * sum(ins[m] * outs[m] for m in hidden) \
            + 2 * N * stack
    if kernel in STOCH_KERNELS:
        return None  # counted in Hessian-vector products instead (see the docstring)
    raise ValueError(kernel)


# ---------------------------------------------------------------------------
# timing
SETTLE = [0.2]
CLOCK = [time.perf_counter]


def _settle():
    """Let the other library's BLAS/OpenMP threads stop spinning (2 cores)."""
    time.sleep(SETTLE[0])


def timed(fn, repeats, slow, check=None):
    """Warm-up once, optionally ``check(result)`` (may raise), then the median of
    ``repeats`` calls (3 when the warm-up took longer than ``slow`` seconds).
    Returns (median seconds, [all seconds], warm-up result)."""
    t_warm, res = warm_up(fn)
    if check is not None:
        check(res)
    n = repeats if t_warm <= slow else min(repeats, 3)
    times = [_time_call(fn) for _ in range(n)]
    return statistics.median(times), times, res


def warm_up(fn):
    """One untimed-for-the-table call; returns (seconds, result)."""
    _settle()
    t0 = CLOCK[0]()
    res = fn()
    return CLOCK[0]() - t0, res


def _time_call(fn):
    """Seconds of one call; the result is freed after the clock stops."""
    t0 = CLOCK[0]()
    out = fn()
    t = CLOCK[0]() - t0
    del out
    return t


def interleaved(cands, repeats, slow):
    """Time candidates ({"fn", "warm", "entry"}) in turns: round r calls each
    candidate that still needs a sample; ``repeats`` samples each, 3 for one
    whose warm-up took over ``slow`` s. Stores the median in
    entry["seconds"] and every sample in entry["all_seconds"]."""
    for c in cands:
        c["n"] = repeats if c["warm"] <= slow else min(repeats, 3)
        c["times"] = []
    for _ in range(max(c["n"] for c in cands)):
        for c in cands:
            if len(c["times"]) < c["n"]:
                _settle()
                c["times"].append(_time_call(c["fn"]))
    for c in cands:
        c["entry"]["seconds"] = statistics.median(c["times"])
        c["entry"]["all_seconds"] = c["times"]
        c["entry"]["warm_up_seconds"] = c["warm"]


def agreement(a, b):
    """max |a - b| / max |b| (0 when both are zero)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise AssertionError(f"shape {a.shape} != {b.shape}")
    scale = np.abs(b).max() if b.size else 0.0
    diff = np.abs(a - b).max() if b.size else 0.0
    return float(diff / scale) if scale > 0 else float(diff)


def kron_agreement(peer, ref):
    """Max over layers and factors; the peer's A may be the in x in block."""
    worst = 0.0
    for (pa, pg), (ra, rg) in zip(peer, ref):
        n = pa.shape[0]
        worst = max(worst, agreement(pa, ra[:n, :n]), agreement(pg, rg))
    if len(peer) != len(ref):
        raise AssertionError(f"{len(peer)} layers != {len(ref)}")
    return worst


def compare(kernel, peer, ref):
    if kernel == "fwd_bwd":
        return max(agreement(peer[0], ref[0]), agreement(peer[1], ref[1]))
    if kernel == "kfac_exact":
        return kron_agreement(peer, ref)
    if kernel == "kfac_mc":
        # Sampled targets differ between libraries: only A is deterministic here;
        # G is checked statistically beforehand (mc_check).
        return kron_agreement([(a, g) for (a, g), _ in zip(peer, ref)],
                              [(a, pg) for (a, _), (_, pg) in zip(ref, peer)])
    if kernel == "diag_mc":
        agreement(peer, ref)  # shapes only: the statistical check did the rest
        return 0.0
    if kernel == "slq":  # (grid, density)
        return max(agreement(peer[0], ref[0]), agreement(peer[1], ref[1]))
    return agreement(peer, ref)


# ---------------------------------------------------------------------------
# machine and BLAS
def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    fl = line.split(":", 1)[1].split()
                    return [x for x in ("avx2", "fma", "avx512f", "avx512_fp16", "amx_tile") if x in fl]
    except OSError:
        pass
    return []


def mem_gib():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


class OwnBlas:
    """cblas_?gemm of the OpenBLAS that pykfac._core loaded (via ctypes)."""

    def __init__(self, libpath):
        self.path = libpath
        self.lib = ctypes.CDLL(libpath)  # the already-loaded instance (same path)
        self.prefix = None
        for prefix in ("scipy_", ""):
            if hasattr(self.lib, prefix + "cblas_sgemm"):
                self.prefix = prefix
                break
        if self.prefix is None:
            raise OSError("no cblas_sgemm in " + libpath)
        self.fn = {}
        for t, c in (("float32", ctypes.c_float), ("float64", ctypes.c_double)):
            f = getattr(self.lib, self.prefix + "cblas_" + ("s" if t == "float32" else "d") + "gemm")
            P = ctypes.c_void_p
            i = ctypes.c_int
            f.argtypes = [i, i, i, i, i, i, c, P, i, P, i, c, P, i]
            f.restype = None
            self.fn[t] = f
        self.num_threads = None
        for name in (self.prefix + "openblas_get_num_threads", "openblas_get_num_threads"):
            if hasattr(self.lib, name):
                g = getattr(self.lib, name)
                g.restype = ctypes.c_int
                self.num_threads = g()
                break

    def gemm(self, dtype, A, B, C):
        n, k = A.shape
        m = B.shape[1]
        # row-major, no transposes: C = A B
        self.fn[dtype](101, 111, 111, n, m, k, 1.0, A.ctypes.data, k, B.ctypes.data, m, 0.0,
                       C.ctypes.data, m)


def gemm_rates(own, n, dtypes, repeats, with_torch):
    """GFLOP/s of an n x n x n GEMM per library and dtype."""
    rng = np.random.default_rng(1)
    flops = 2.0 * n ** 3
    out = {}
    for dt in dtypes:
        A = rng.standard_normal((n, n)).astype(dt)
        B = rng.standard_normal((n, n)).astype(dt)
        C = np.empty((n, n), dtype=dt)
        row = {}
        if own is not None:
            t, _, _ = timed(lambda: own.gemm(dt, A, B, C), repeats, 1e9)
            row["pykfac_openblas"] = flops / t / 1e9
            ref = A[:64] @ B
            if agreement(C[:64], ref) > TOL[dt]:
                raise AssertionError("pykfac's cblas gemm (ctypes) gives a wrong product")
        t, _, _ = timed(lambda: np.matmul(A, B, out=C), repeats, 1e9)
        row["numpy"] = flops / t / 1e9
        if with_torch:
            import torch

            tA, tB = torch.from_numpy(A), torch.from_numpy(B)
            tC = torch.empty_like(tA)
            t, _, _ = timed(lambda: torch.matmul(tA, tB, out=tC), repeats, 1e9)
            row["torch"] = flops / t / 1e9
        out[dt] = row
    return out


def numpy_blas():
    try:
        cfg = np.show_config(mode="dicts")
        b = cfg["Build Dependencies"]["blas"]
        return f"{b.get('name', '?')} {b.get('version', '')}".strip()
    except Exception:  # older numpy
        return "?"


def loaded_blas_libraries():
    libs = set()
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                p = line.split()[-1]
                if any(s in p.lower() for s in ("openblas", "libmkl", "libblas", "libgomp", "libiomp")):
                    libs.add(p)
    except OSError:
        pass
    return sorted(libs)


# ---------------------------------------------------------------------------
# the benchmark
def fmt_s(t):
    if t is None:
        return "-"
    return f"{t:.4f}" if t < 10 else f"{t:.2f}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny configuration for a smoke run")
    ap.add_argument("--sizes", default=None, help="comma-separated N (default 1024,8192)")
    ap.add_argument("--dtypes", default="float32,float64")
    ap.add_argument("--net", default=None, help="widths, default 784,512,512,10")
    # the matrix-free rows cost seconds per product at N = 8192: opt-in
    ap.add_argument("--kernels", default=",".join(k for k in KERNELS if k not in STOCH_KERNELS),
                    help="subset of " + ",".join(KERNELS) + " (default: all but " + ",".join(STOCH_KERNELS) + ")")
    ap.add_argument("--jac-n", type=int, default=None, help="N for the Jacobian row (default 32)")
    ap.add_argument("--repeats", type=int, default=None, help="timed calls per fast row (default 7)")
    ap.add_argument("--slow", type=float, default=2.0, help="rows slower than this (s) get 3 repeats")
    ap.add_argument("--gemm-n", type=int, default=None, help="GEMM size (default 4096)")
    ap.add_argument("--mc-check-samples", type=int, default=None,
                    help="MC samples per datum for the statistical MC K-FAC check (default 64)")
    ap.add_argument("--threads", type=int, default=None,
                    help="BLAS/OpenMP threads for pykfac and the peers (default: all usable cores); "
                         "1 gives steadier numbers on a busy machine")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall: time.perf_counter (default); cpu: this process's CPU time "
                         "(time.process_time), which other processes on a busy machine do not "
                         "inflate; meaningful only with --threads 1 (idle BLAS threads spin)")
    ap.add_argument("--slq-steps", type=int, default=None,
                    help="Lanczos steps per run of the slq row (curvlinops' ncv; default 32)")
    ap.add_argument("--slq-repeats", type=int, default=None, help="Lanczos runs of the slq row (default 2)")
    ap.add_argument("--matvecs", type=int, default=None,
                    help="products of the xtrace and xdiag rows (even, >= 4; default 32)")
    ap.add_argument("--stoch-seeds", type=int, default=None,
                    help="seeds per library of the statistical xtrace/xdiag check (default 3; 8 on the small net)")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--json", default=None, help="write all numbers to this file")
    args = ap.parse_args(argv)

    quick = args.quick
    sizes_net = [int(s) for s in (args.net or ("100,64,64,10" if quick else "784,512,512,10")).split(",")]
    Ns = [int(s) for s in (args.sizes or ("256" if quick else "1024,8192")).split(",")]
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    for d in dtypes:
        if d not in ("float32", "float64"):
            ap.error(f"--dtypes: expected float32 and/or float64, got {d!r}")
    kernels = [k.strip() for k in args.kernels.split(",") if k.strip()]
    for k in kernels:
        if k not in KERNELS:
            ap.error(f"--kernels: unknown kernel {k!r} (expected some of {', '.join(KERNELS)})")
    jac_n = args.jac_n or (8 if quick else 32)
    repeats = args.repeats or (3 if quick else 7)
    gemm_n = args.gemm_n or (512 if quick else 4096)
    mc_check_samples = args.mc_check_samples or (16 if quick else 64)
    stoch_cfg = {"num_steps": args.slq_steps or (8 if quick else 32),
                 "num_repeats": args.slq_repeats or (1 if quick else 2),
                 "num_points": 1024, "kappa": 3.0,
                 "num_matvecs": args.matvecs or (8 if quick else 32),
                 "seeds": args.stoch_seeds or (2 if quick else 3)}
    if stoch_cfg["num_matvecs"] < 4 or stoch_cfg["num_matvecs"] % 2:
        ap.error(f"--matvecs: expected an even number >= 4, got {stoch_cfg['num_matvecs']}")
    if stoch_cfg["num_steps"] < 2 or stoch_cfg["num_repeats"] < 1 or stoch_cfg["seeds"] < 2:
        ap.error("--slq-steps >= 2, --slq-repeats >= 1 and --stoch-seeds >= 2 expected")
    if quick:
        SETTLE[0] = 0.02
    if args.clock == "cpu":
        CLOCK[0] = time.process_time
        SETTLE[0] = 0.02
        if args.threads != 1:
            print("warning: --clock cpu adds up the CPU time of all threads (spinning included); "
                  "use it with --threads 1", file=sys.stderr)
    ncores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()

    try:
        import pykfac as pk
    except ImportError as exc:
        print(f"pykfac is not importable ({exc}); build it first: tools/devbuild.sh /tmp/x and "
              "PYTHONPATH=/tmp/x/lib", file=sys.stderr)
        return 2

    # ---- peers
    peers_on = not args.no_peers
    peers_msg = "disabled (--no-peers)"
    pp = None
    if peers_on:
        import _peers as pp

        ok, why = pp.available()
        if not ok:
            peers_on = False
            peers_msg = "skipped: " + why
        else:
            import torch

            torch.set_num_threads(args.threads or ncores)
            warnings.filterwarnings("ignore", category=UserWarning, module=r"(torch|backpack|curvlinops)")
            warnings.filterwarnings("ignore", message=".*[Ff]ull backward hook.*")
            peers_msg = "on"

    # ---- machine
    from pykfac import _core

    binfo = _core.blas_info()
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        shown = pk.show_config()
    pk_config = buf.getvalue().strip() or (str(shown) if shown is not None else "")
    own = None
    own_err = ""
    try:
        own = OwnBlas(binfo.get("library") or "")
    except OSError as exc:
        own_err = str(exc)

    machine = {
        "cpu": cpu_model(), "cores": ncores, "cpu_flags": cpu_flags(), "mem_gib": round(mem_gib(), 1),
        "python": platform.python_version(), "numpy": np.__version__,
        "pykfac_blas": binfo, "numpy_blas": numpy_blas(),
    }
    if peers_on:
        machine["peers"] = pp.versions()
    print("== machine")
    machine["loadavg_start"] = os.getloadavg()
    print(f"cpu            {machine['cpu']}  ({ncores} cores usable; {' '.join(machine['cpu_flags'])}; "
          f"{machine['mem_gib']:.0f} GiB)")
    print(f"pykfac BLAS    {binfo.get('source')}; core {binfo.get('corename')}; "
          f"{binfo.get('num_threads')} threads")
    print(f"               config: {binfo.get('config')}")
    print(f"               library: {binfo.get('library')}")
    if pk_config:
        for line in pk_config.splitlines():
            print("  show_config> " + line)
    print(f"numpy BLAS     {machine['numpy_blas']} (numpy {np.__version__}; a separate OpenBLAS build)")
    if peers_on:
        v = machine["peers"]
        print(f"peers          torch {v['torch']} ({v['torch_blas']}, {v['torch_threads']} threads), "
              f"curvlinops {v['curvlinops-for-pytorch']}, backpack {v['backpack-for-pytorch']}")
    else:
        print(f"peers          {peers_msg}")

    # ---- GEMM rate
    clock = "wall-clock" if args.clock == "wall" else "CPU-time (time.process_time)"
    print(f"threads        {args.threads or ncores} per library (--threads); {clock} seconds")
    print(f"\n== GEMM rate (n = {gemm_n}, square, median of {repeats}; GFLOP/s)")
    if own is None:
        print(f"pykfac's own cblas_?gemm not reachable ({own_err}); using numpy's matmul as the reference")
    gemm = gemm_rates(own, gemm_n, dtypes, repeats, peers_on)
    for dt in dtypes:
        r = gemm[dt]
        parts = []
        if "pykfac_openblas" in r:
            parts.append(f"pykfac's OpenBLAS {r['pykfac_openblas']:7.1f}")
        parts.append(f"numpy (OpenBLAS) {r['numpy']:7.1f}")
        if "torch" in r:
            parts.append(f"torch ({machine['peers']['torch_blas']}) {r['torch']:7.1f}")
        print(f"{dt:8s} " + "   ".join(parts))
    gemm_ref = {dt: gemm[dt].get("pykfac_openblas", gemm[dt]["numpy"]) for dt in dtypes}
    gemm_ref_name = "pykfac's OpenBLAS" if own is not None else "numpy's OpenBLAS"
    print(f"%GEMM below is relative to {gemm_ref_name} in the row's dtype.")

    # ---- rows
    rows = []
    failures = []
    K = sizes_net[-1]
    rng = np.random.default_rng(0)
    N_max = max(Ns + [jac_n])
    X64 = rng.standard_normal((N_max, sizes_net[0]))
    y_all = rng.integers(0, K, N_max).astype(np.int64)
    print(f"\n== kernels: MLP {'-'.join(map(str, sizes_net))}, tanh, cross-entropy (sum); "
          f"median of {repeats} calls after a warm-up (3 for calls over {args.slow:g} s); pykfac and "
          f"the peers of a row take turns")

    for dt in dtypes:
        npdt = np.dtype(dt)
        net = pk.MLP(sizes_net, activation="tanh", dtype=npdt.type, seed=0)
        Ws = [np.asarray(layer.W) for layer in net.layers]
        bs = [np.asarray(layer.b) for layer in net.layers]
        D = int(np.asarray(net.theta).size)
        v = np.random.default_rng(2).standard_normal(D).astype(npdt)
        plan = []
        if "jacobian" in kernels:
            plan.append(("jacobian", jac_n))
        for N in Ns:
            plan += [(k, N) for k in kernels if k != "jacobian"]
        problems = {}
        mc_results = {}
        stoch_results = {}
        for kernel, N in plan:
            X = np.ascontiguousarray(X64[:N].astype(npdt))
            y = y_all[:N]
            spec = None
            calls = {
                "fwd_bwd": lambda: pk.loss_and_grad(net, X, y, "ce"),
                "jacobian": lambda: pk.jacobian(net, X),
                "ggn_mv": lambda: pk.ggn_matvec(net, X, y, "ce", v),
                "kfac_exact": lambda: pk.kfac(net, (X, y), "ce", kind="exact"),
                "kfac_mc": lambda: pk.kfac(net, (X, y), "ce", kind="mc", mc_samples=1, seed=0),
                "diag_ggn": lambda: pk.diag_ggn(net, X, y, "ce"),
                "diag_mc": lambda: pk.diag_ggn(net, X, y, "ce", mc_samples=1, seed=0),
                "diag_hess": lambda: pk.diag_hessian(net, X, y, "ce"),
                "ekfac": lambda: pk.ekfac(net, (X, y), "ce"),
                "slq": lambda: stoch_call(pk, spec),
                "xtrace": lambda: stoch_call(pk, spec),
                "xdiag": lambda: stoch_call(pk, spec),
            }
            try:
                if kernel in STOCH_KERNELS:
                    spec = stoch_setup(kernel, pk, net, X, y, stoch_cfg)
                t_warm, res_pk = warm_up(calls[kernel])
            except Exception as exc:  # report and go on with the other rows
                print(f"{LABEL[kernel]:12s} {N:>5d} {dt:7s} pykfac FAILED: {type(exc).__name__}: {exc}")
                failures.append(f"{LABEL[kernel]} N={N} {dt}: pykfac raised {type(exc).__name__}: {exc}")
                continue
            ref = to_reference(kernel, res_pk)
            del res_pk
            fl = flop_count(kernel, sizes_net, N)
            row = {"kernel": kernel, "N": N, "dtype": dt, "flops": fl, "peers": []}
            if spec is not None:
                row["settings"] = {k: spec[k] for k in ("num_steps", "num_repeats", "num_points", "kappa",
                                                         "kappa_pykfac", "boundaries", "num_matvecs")
                                   if k in spec}
            cands = [{"fn": calls[kernel], "warm": t_warm, "entry": row}]
            if peers_on:
                if N not in problems:
                    problems[N] = pp.Problem(Ws, bs, "tanh", X, y)
                P = problems[N]
                if kernel in MC_KERNELS:
                    if kernel not in mc_results:
                        mc_results[kernel] = mc_check(kernel, pk, pp, net, Ws, bs, X64, y_all, npdt,
                                                      mc_check_samples, failures)
                    row["mc_check"] = mc_result = mc_results[kernel]
                if kernel in STOCH_KERNELS and pp.peers_for(kernel):
                    if kernel not in stoch_results or kernel == "slq":  # xtrace/xdiag: once per dtype
                        stoch_results[kernel] = stoch_check(kernel, pk, pp, net, P, spec, ref, npdt, stoch_cfg,
                                                            failures)
                    row["stoch_check"] = stoch_results[kernel]
                for name, why in pp.missing_peers(kernel):
                    row["peers"].append({"name": name, "seconds": None, "agrees": None, "skipped": why})
                for name, make in pp.peers_for(kernel):
                    if kernel in MC_KERNELS and not mc_result["peers"].get(name, {}).get("ok", False):
                        row["peers"].append({"name": name, "seconds": None, "agrees": False,
                                             "error": "failed the statistical MC check (not timed)"})
                        continue
                    if kernel in STOCH_KERNELS and not row["stoch_check"].get("ok", False):
                        row["peers"].append({"name": name, "seconds": None, "agrees": False,
                                             "error": "failed the statistical check (not timed)"})
                        continue
                    if kernel in STOCH_KERNELS:
                        entry, run, t_peer = check_stoch_peer(kernel, name, make, P, spec, ref, dt, pp)
                    else:
                        entry, run, t_peer = check_peer(kernel, name, make, P, v, ref, dt)
                    row["peers"].append(entry)
                    if entry.get("skipped"):
                        continue
                    if entry.get("error") or not entry["agrees"]:
                        failures.append(f"{LABEL[kernel]} N={N} {dt}: {name}: "
                                        + (entry.get("error") or f"differs by {entry['max_rel_diff']:.2e}"))
                    else:
                        cands.append({"fn": run, "warm": t_peer, "entry": entry})
                    gc.collect()
            del ref
            gc.collect()
            # pykfac and the agreeing peers take turns, so a change in the
            # machine's load hits all of them alike
            interleaved(cands, repeats, args.slow)
            del cands
            t_pk = row["seconds"]
            if fl is not None:
                row.update(gflops=fl / t_pk / 1e9, frac_gemm=fl / t_pk / 1e9 / gemm_ref[dt])
            if spec is not None:
                row["products"] = product_times(kernel, spec, row, P if peers_on else None, pp, repeats)
            if kernel == "jacobian":
                row["out_gbytes_per_s"] = N * K * D * npdt.itemsize / t_pk / 1e9
            timed_peers = [p for p in row["peers"] if p.get("seconds") is not None]
            if timed_peers:
                best = min(timed_peers, key=lambda p: p["seconds"])
                row["fastest_peer"] = best["name"]
                row["fastest_peer_seconds"] = best["seconds"]
                row["ratio"] = best["seconds"] / t_pk
            rows.append(row)
            print_row(row, header=len(rows) == 1)
        problems.clear()
        if peers_on and "ggn_mv" in kernels and dt == "float64":
            mse_check(pk, pp, net, Ws, bs, X64[:64].astype(npdt), K, failures, machine)

    machine["loadavg_end"] = os.getloadavg()
    print_summary(rows, peers_on, jac_n, failures)
    print("load average (1 min) at start / end: %.2f / %.2f (other processes on the machine skew times)"
          % (machine["loadavg_start"][0], machine["loadavg_end"][0]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "clock": args.clock, "threads": args.threads or ncores, "gemm_gflops": gemm, "gemm_reference": gemm_ref_name,
                       "gemm_n": gemm_n, "net": sizes_net, "repeats": repeats, "rows": rows,
                       "peer_failures": failures}, f, indent=1, default=float)
        print(f"\nwrote {args.json}")
    return 1 if failures else 0


def to_reference(kernel, res):
    """pykfac's result in the comparison format of _peers."""
    if kernel == "slq":
        return np.asarray(res[0]), np.asarray(res[1])
    if kernel == "fwd_bwd":
        return float(res[0]), np.asarray(res[1])
    if kernel in ("kfac_exact", "kfac_mc"):
        return [(np.asarray(a), np.asarray(g)) for a, g in zip(res.A, res.G)]
    if kernel == "ekfac":
        import _peers  # imports without torch too

        return res.matvec(_peers.ekfac_probe(res.num_params, res.dtype))
    return np.asarray(res)


def pp_skip():
    """_peers.PeerSkipped (imported only with the peers on)."""
    import _peers

    return _peers.PeerSkipped


def check_peer(kernel, name, make, P, v, ref, dt):
    """Build a peer, run it once (its warm-up) and compare with pykfac's result.
    Returns (entry, run or None, warm-up seconds)."""
    entry = {"name": name, "seconds": None}
    try:
        run, convert = make(P, v) if kernel == "ggn_mv" else make(P)
        t_warm, raw = warm_up(run)
        d = compare(kernel, convert(raw), ref)
        del raw
        entry["max_rel_diff"] = d
        entry["agrees"] = bool(d <= TOL[dt])
        return entry, run, t_warm
    except pp_skip() as exc:  # a peer that would not fit in memory: not run, not a failure
        entry.update(skipped=str(exc), agrees=None)
        return entry, None, None
    except Exception as exc:  # a peer that cannot run this problem
        entry.update(error=f"{type(exc).__name__}: {exc}", agrees=False)
        return entry, None, None


# ---------------------------------------------------------------------------
# the matrix-free stochastic rows (slq, xtrace, xdiag)
class _Recorder:
    """A square operator that forwards products to ``A`` and keeps a copy of
    the input of every ``every``-th call (the first of a Lanczos run, or the
    sign vectors of XTrace/XDiag); ``stop_after`` calls then raise _Recorded."""

    def __init__(self, A, every=1, stop_after=None):
        from scipy.sparse.linalg import LinearOperator

        rec = self

        class Op(LinearOperator):
            def _matmat(self, V):
                if rec.calls % every == 0:
                    rec.inputs.append(np.array(V, dtype=np.float64, copy=True))
                rec.calls += 1
                if stop_after is not None and rec.calls >= stop_after:
                    raise _Recorded()
                return A @ V

            def _matvec(self, v):
                return self._matmat(np.asarray(v).reshape(-1, 1))[:, 0]

            def _adjoint(self):
                return self

        self.calls = 0
        self.inputs = []
        self.op = Op(dtype=A.dtype, shape=A.shape)


class _Recorded(Exception):
    pass


def stoch_setup(kernel, pk, net, X, y, cfg):
    """pykfac's Hessian operator and the settings of a stochastic row, plus the
    random vectors of pykfac's call (seed 0), recorded through a wrapper
    operator so curvlinops can be given the same ones:
    slq: one pykfac run with boundaries=None (its grid ends, the extreme Ritz
    values widened by 5%, become both libraries' boundaries) recording the
    start vectors; xtrace/xdiag: the first block of products (Omega), then stop."""
    op = pk.HessianOperator(net, X, y, "ce")
    D = op.shape[0]
    spec = {"kernel": kernel, "op": op, "D": D, "seed": 0}
    if kernel == "slq":
        S, R, npts = min(cfg["num_steps"], D), cfg["num_repeats"], cfg["num_points"]
        # curvlinops: sigma = (2 / (ncv - 1) / sqrt(8 ln kappa)) on [-1, 1], i.e. that times
        # (right - left) / 2 in lambda units; pykfac: kappa_pk * (right - left) / (npts - 1)
        kappa_pk = (npts - 1) / ((S - 1) * np.sqrt(8 * np.log(cfg["kappa"])))
        rec = _Recorder(op, every=S)
        grid, _ = pk.spectral_density(rec.op, num_points=npts, num_repeats=R, num_steps=S, kappa=kappa_pk,
                                      seed=spec["seed"])
        if rec.calls != R * S or len(rec.inputs) != R:
            raise RuntimeError(f"expected {R} Lanczos runs of {S} products, saw {rec.calls} products")
        spec.update(num_steps=S, num_repeats=R, num_points=npts, kappa=cfg["kappa"], kappa_pykfac=kappa_pk,
                    boundaries=(float(grid[0]), float(grid[-1])),
                    vectors=[v[:, 0] for v in rec.inputs], num_products=R * S, block=1)
    else:
        m = cfg["num_matvecs"]
        rec = _Recorder(op, stop_after=1)
        try:
            if kernel == "xtrace":
                pk.trace_estimate(rec.op, m, method="xtrace", seed=spec["seed"])
            else:
                pk.diag_estimate(rec.op, m, method="xdiag", seed=spec["seed"])
            raise RuntimeError("the recorder saw no product")
        except _Recorded:
            pass
        Om = rec.inputs[0]
        if Om.shape != (D, m // 2):
            raise RuntimeError(f"expected a first block of {m // 2} sign vectors, got shape {Om.shape}")
        spec.update(num_matvecs=m, vectors=list(Om.T), num_products=m, block=m // 2)
    return spec


def stoch_call(pk, spec):
    """pykfac's timed call of a stochastic row (fixed seed, so the same vectors)."""
    k, op = spec["kernel"], spec["op"]
    if k == "slq":
        return pk.spectral_density(op, num_points=spec["num_points"], num_repeats=spec["num_repeats"],
                                   num_steps=spec["num_steps"], kappa=spec["kappa_pykfac"],
                                   boundaries=spec["boundaries"], seed=spec["seed"])
    if k == "xtrace":
        return pk.trace_estimate(op, spec["num_matvecs"], method="xtrace", seed=spec["seed"])
    return pk.diag_estimate(op, spec["num_matvecs"], method="xdiag", seed=spec["seed"])


def check_stoch_peer(kernel, name, make, P, spec, ref, dt, pp):
    """Like check_peer, but the peer's warm-up call draws pykfac's random
    vectors (pp.fixed_vectors), so the results must agree to TOL; the timed
    calls afterwards draw their own."""
    entry = {"name": name, "seconds": None}
    try:
        run, convert = make(P, spec)
        with pp.fixed_vectors(kernel, spec["vectors"]):
            t_warm, raw = warm_up(run)
        res = convert(raw)
        d = compare(kernel, res, ref)
        del raw
        entry["max_rel_diff"] = d
        entry["agrees"] = bool(d <= TOL[dt])
        entry["same_vectors"] = True
        if kernel == "slq" and "mean_rayleigh" in spec:  # see stoch_check
            m1 = _first_moment(*res)
            entry["first_moment"] = m1
            entry["first_moment_diff"] = abs(m1 - spec["mean_rayleigh"]) / spec["width"]
            entry["agrees"] = entry["agrees"] and entry["first_moment_diff"] <= 1e-3
        return entry, run, t_warm
    except Exception as exc:
        entry.update(error=f"{type(exc).__name__}: {exc}", agrees=False)
        return entry, None, None


def _mean_sd(x):
    x = np.asarray(x, dtype=np.float64)
    return float(x.mean()), float(x.std(ddof=1))


def _same_mean(a, b, z=3.0):
    """The means of samples a and b agree within z standard errors of their difference."""
    (ma, sa), (mb, sb) = _mean_sd(a), _mean_sd(b)
    se = np.sqrt(sa ** 2 / len(a) + sb ** 2 / len(b))
    return bool(abs(ma - mb) <= z * se + 1e-12 * max(abs(ma), abs(mb), 1.0)), float(se)


def _estimate_errors(kernel, estimates, exact):
    """xtrace: signed relative error (est - tr) / |tr|; xdiag: ||est - d|| / ||d||."""
    if kernel == "xtrace":
        tr = float(np.sum(exact))
        return [(e - tr) / abs(tr) for e in estimates]
    return [float(np.linalg.norm(e - exact) / np.linalg.norm(exact)) for e in estimates]


def _first_moment(grid, density):
    return float(np.sum(grid * density) / np.sum(density))


def stoch_check(kernel, pk, pp, net, P, spec, ref, npdt, cfg, failures):
    """Statistical check of a stochastic row's peer, each library with its OWN
    random vectors (the deterministic same-vector check is check_stoch_peer's).

    xtrace/xdiag: (a) on a small net (30-20-20-5, N = 64) the dense Hessian
    (pk.hessian) is given to both as the same matrix (array / tensor): errors
    against its exact trace or diagonal over 8 seeds each; (b) on the benchmark
    problem (pykfac's and curvlinops' Hessian operators) over cfg["seeds"]
    seeds each, against the exact diagonal pk.diag_hessian (and its sum). The
    two libraries' mean errors must agree within 3 standard errors.
    slq: the first moment of pykfac's density ``ref`` equals the mean Rayleigh
    quotient v'Hv / v'v of its start vectors (Gauss quadrature is exact for
    degree 1; the Gaussian smoothing keeps the mean), to 1e-3 of the grid's
    width (curvlinops' density, from the same start vectors, is checked the
    same way in check_stoch_peer); that mean estimates tr(H)/D (tr from
    pk.diag_hessian), reported with its sampling error (sd / sqrt(runs))."""
    dt = npdt.name
    out = {"kind": kernel}
    try:
        exact_diag = np.asarray(pk.diag_hessian(net, np.asarray(P.X.numpy()), P.y.numpy(), "ce"),
                                dtype=np.float64)
        if kernel == "slq":
            op, vecs = spec["op"], spec["vectors"]
            q = [float(v @ np.asarray(op @ v.reshape(-1, 1), dtype=np.float64)[:, 0] / (v @ v)) for v in vecs]
            grid, dens = ref
            width = float(grid[-1] - grid[0])
            m1_pk = _first_moment(grid, dens)
            mq = float(np.mean(q))
            d_pk = abs(m1_pk - mq) / width
            spec.update(mean_rayleigh=mq, width=width)  # for curvlinops' density (check_stoch_peer)
            trD = float(exact_diag.sum() / exact_diag.size)
            se = float(np.std(q, ddof=1) / np.sqrt(len(q))) if len(q) > 1 else float("nan")
            out.update(first_moment_pykfac=m1_pk, mean_rayleigh=mq, diff_pykfac=d_pk, trace_over_D=trD,
                       rayleigh_se=se, ok=d_pk <= 1e-3)
            if not out["ok"]:
                failures.append(f"{LABEL[kernel]} {dt}: first moment of pykfac's density {m1_pk:.4e} vs "
                                f"mean v'Hv/v'v {mq:.4e}")
            return out
        m = cfg["num_matvecs"]
        # (a) the same dense matrix, small net
        small = pk.MLP([30, 20, 20, 5], activation="tanh", dtype=npdt.type, seed=1)
        rs = np.random.default_rng(5)
        Xs = rs.standard_normal((64, 30)).astype(npdt)
        ys = rs.integers(0, 5, 64)
        Hs = np.asarray(pk.hessian(small, Xs, ys, "ce"))
        Hs = (Hs + Hs.T) / 2
        Ht = pp.torch.from_numpy(Hs)
        ms = min(m, Hs.shape[0] - 2)
        ms -= ms % 2
        seeds = range(8)
        pk_fn = (lambda A, mm, sd: pk.trace_estimate(A, mm, method="xtrace", seed=sd)) if kernel == "xtrace"             else (lambda A, mm, sd: pk.diag_estimate(A, mm, method="xdiag", seed=sd))
        exact_s = np.diag(Hs).astype(np.float64)
        e_pk = _estimate_errors(kernel, [pk_fn(Hs, ms, 100 + s) for s in seeds], exact_s)
        e_cl = _estimate_errors(kernel, [pp.curvlinops_estimate(kernel, Ht, ms, 100 + s) for s in seeds], exact_s)
        ok_a, se_a = _same_mean(e_pk, e_cl)
        out["small"] = {"net": "30-20-20-5", "N": 64, "D": int(Hs.shape[0]), "num_matvecs": ms,
                        "seeds": len(seeds), "pykfac": _mean_sd(e_pk), "curvlinops": _mean_sd(e_cl),
                        "se_diff": se_a, "ok": ok_a}
        # (b) the benchmark problem, each library's own Hessian operator
        H = pp.curvlinops_hessian(P)
        seeds = range(cfg["seeds"])
        e_pk = _estimate_errors(kernel, [pk_fn(spec["op"], m, 1000 + s) for s in seeds], exact_diag)
        e_cl = _estimate_errors(kernel, [pp.curvlinops_estimate(kernel, H, m, 1000 + s) for s in seeds],
                                exact_diag)
        ok_b, se_b = _same_mean(e_pk, e_cl)
        out["bench"] = {"num_matvecs": m, "seeds": len(seeds), "pykfac": _mean_sd(e_pk),
                        "curvlinops": _mean_sd(e_cl), "se_diff": se_b, "ok": ok_b,
                        "exact_trace": float(exact_diag.sum())}
        out["ok"] = ok_a and ok_b
        if not out["ok"]:
            failures.append(f"{LABEL[kernel]} {dt} statistical check: small {out['small']}, bench {out['bench']}")
    except Exception as exc:
        out.update(ok=False, error=f"{type(exc).__name__}: {exc}")
        failures.append(f"{LABEL[kernel]} {dt} statistical check could not run: {out['error']}")
    return out


def product_times(kernel, spec, row, P, pp, repeats):
    """Seconds per Hessian-vector product of each library, timed as the tool
    applies them (slq: single vectors; xtrace/xdiag: blocks of m/2), and the
    share of each library's call they explain (products per call x time)."""
    k, n = spec["block"], spec["num_products"]
    W = np.random.default_rng(7).standard_normal((spec["D"], k))  # pykfac's tools pass float64 blocks
    op = spec["op"]
    t_pk, _, _ = timed(lambda: op @ W, min(repeats, 3), 1e9)
    out = {"per_call": n, "block": k, "pykfac": t_pk / k}
    out["pykfac_share"] = n * out["pykfac"] / row["seconds"]
    for p in row["peers"]:
        if p.get("seconds") is None or P is None:
            continue
        fn = pp.curvlinops_product(P, k)
        t, _, _ = timed(fn, min(repeats, 3), 1e9)
        out["peer"] = p["name"]
        out["peer_per_product"] = t / k
        out["peer_share"] = n * (t / k) / p["seconds"]
    return out


def mc_check(kernel, pk, pp, net, Ws, bs, X, y, npdt, S, failures):
    """Statistical check of the MC peers (K-FAC MC or diag GGN MC) on the
    first 256 samples with S draws per datum: the deterministic part (K-FAC's
    A) must agree to TOL; the sampled part (G, or the diagonal) within the MC
    noise, measured by pykfac's own MC-vs-exact distance (the difference of
    two independent estimates is ~1.4x that; a factor-2 convention error
    gives >= 0.5)."""
    n = min(256, X.shape[0])
    dt = npdt.name
    Xs, ys = np.ascontiguousarray(X[:n].astype(npdt)), y[:n]
    if kernel == "kfac_mc":
        ref_mc = to_reference(kernel, pk.kfac(net, (Xs, ys), "ce", kind="mc", mc_samples=S, seed=1))
        ref_ex = to_reference(kernel, pk.kfac(net, (Xs, ys), "ce", kind="exact"))
        noise = max(agreement(g, ge) for (_, g), (_, ge) in zip(ref_mc, ref_ex))
    else:
        ref_mc = np.asarray(pk.diag_ggn(net, Xs, ys, "ce", mc_samples=S, seed=1))
        noise = agreement(ref_mc, np.asarray(pk.diag_ggn(net, Xs, ys, "ce")))
    P = pp.Problem(Ws, bs, "tanh", Xs, ys)
    res = pp.mc_agreement(kernel, P, ref_mc, S, agreement)
    out = {"n": n, "mc_samples": S, "pykfac_mc_vs_exact": noise, "peers": {}}
    tolG = max(4 * noise, 0.05)
    for name, (dA, dG) in res.items():
        ok = dA <= TOL[dt] and dG <= tolG
        out["peers"][name] = {"A": dA, "sampled": dG, "ok": ok}
        if not ok:
            failures.append(f"{LABEL[kernel]} {dt} statistical check: {name}: A {dA:.1e}, "
                            f"sampled part {dG:.2f} (tol {tolG:.2f})")
    out["tol_G"] = tolG
    return out


def mse_check(pk, pp, net, Ws, bs, X, K, failures, machine):
    """pykfac's 'mse' GGN product = curvlinops' MSELoss(sum) product / 2."""
    Y = np.random.default_rng(3).standard_normal((X.shape[0], K)).astype(X.dtype)
    v = np.random.default_rng(4).standard_normal(int(np.asarray(net.theta).size)).astype(X.dtype)
    try:
        mine = np.asarray(pk.ggn_matvec(net, X, Y, "mse", v))
        theirs = pp.mse_ggn_matvec_check(Ws, bs, "tanh", X, Y, v)
        d = agreement(theirs, mine)
        d2 = agreement(2 * theirs, mine)
        msg = f"MSE GGN matvec vs curvlinops MSELoss(sum)/2 (N={X.shape[0]}, {X.dtype}): {d:.1e} " \
              f"(without the /2: {d2:.1e})"
        machine["mse_check"] = {"diff": d, "diff_without_half": d2}
        if not d <= TOL[str(X.dtype)]:
            failures.append(msg)
    except Exception as exc:
        msg = f"MSE GGN check could not run: {type(exc).__name__}: {exc}"
    print("   " + msg)


HEAD = (f"{'kernel':12s} {'N':>5s} {'dtype':7s} {'pykfac s':>9s} {'GFLOP/s':>8s} {'%GEMM':>6s}  "
        f"{'fastest peer':28s} {'peer s':>9s} {'peer/pk':>8s}  goal")


def row_goal(row):
    notes = []
    if row["kernel"] in ("kfac_exact", "kfac_mc") and row["frac_gemm"] < KFAC_GEMM_GOAL:
        notes.append("<50%GEMM")
    if "ratio" in row and row["ratio"] < PEER_RATIO_GOAL:
        notes.append("<2x")
    if "ratio" not in row and row["kernel"] not in ("kfac_exact", "kfac_mc"):
        return "-"
    return "MISS " + ",".join(notes) if notes else "ok"


def format_row(row):
    N = f"{row['N']}" + ("*" if row["kernel"] == "jacobian" else "")
    peer = row.get("fastest_peer", "-")
    rate = (f"{row['gflops']:8.1f} {100 * row['frac_gemm']:5.0f}%" if row.get("gflops") is not None
            else f"{'-':>8s} {'-':>6s}")
    return (f"{LABEL[row['kernel']]:12s} {N:>5s} {row['dtype']:7s} {fmt_s(row['seconds']):>9s} "
            f"{rate}  {peer:28s} "
            f"{fmt_s(row.get('fastest_peer_seconds')):>9s} "
            f"{(format(row['ratio'], '.2f') + 'x') if 'ratio' in row else '-':>8s}  {row_goal(row)}")


def print_row(row, header):
    if header:
        print(HEAD)
    print(format_row(row), flush=True)
    if "mc_check" in row:
        m = row["mc_check"]
        for name, r in m["peers"].items():
            part = f"A diff {r['A']:.1e}, G diff" if row["kernel"] == "kfac_mc" else "diagonal diff"
            print(f"   MC check ({m['n']} samples x {m['mc_samples']} draws) {name}: {part} "
                  f"{r['sampled']:.3f} <= {m['tol_G']:.3f} (pykfac MC vs exact: "
                  f"{m['pykfac_mc_vs_exact']:.3f}) {'ok' if r['ok'] else 'FAILED'}")
    if "settings" in row:
        st = row["settings"]
        if row["kernel"] == "slq":
            print(f"   settings: {st['num_repeats']} runs x {st['num_steps']} steps, {st['num_points']} points, "
                  f"boundaries ({st['boundaries'][0]:.4g}, {st['boundaries'][1]:.4g}) for both, curvlinops "
                  f"kappa {st['kappa']:g} = pykfac kappa {st['kappa_pykfac']:.4f}")
        else:
            print(f"   settings: {st['num_matvecs']} products ({st['num_matvecs'] // 2} sign vectors)")
    if "stoch_check" in row:
        print_stoch_check(row["stoch_check"])
    for p in row["peers"]:
        if p.get("skipped"):
            print(f"   peer {p['name']}: skipped ({p['skipped']})")
        elif p.get("error"):
            print(f"   peer {p['name']}: ERROR {p['error']}")
        else:
            flag = "agrees" if p["agrees"] else "DISAGREES (not timed)"
            if row["kernel"] == "diag_mc":
                diff = "sampled: see the MC check"
            elif p.get("same_vectors"):
                diff = f"max rel diff {p['max_rel_diff']:.1e} (pykfac's random vectors)"
                if "first_moment" in p:
                    diff += f", first moment {p['first_moment']:.6g} ({p['first_moment_diff']:.1e})"
            else:
                diff = f"max rel diff {p['max_rel_diff']:.1e}"
                diff += " (A; G: see the MC check)" if row["kernel"] == "kfac_mc" else ""
            print(f"   peer {p['name']:28s} {fmt_s(p['seconds']):>9s} s   {diff} {flag}")
    if "out_gbytes_per_s" in row:
        print(f"   jacobian output written at {row['out_gbytes_per_s']:.2f} GB/s")
    if "products" in row:
        pr = row["products"]
        what = "single vectors" if pr["block"] == 1 else f"blocks of {pr['block']}"
        line = (f"   Hessian-vector products: {pr['per_call']} per call ({what}); per product pykfac "
                f"{1e3 * pr['pykfac']:.2f} ms ({100 * pr['pykfac_share']:.0f}% of its call)")
        if "peer_per_product" in pr:
            line += (f", curvlinops {1e3 * pr['peer_per_product']:.2f} ms ({100 * pr['peer_share']:.0f}% of its "
                     f"call); product ratio {pr['peer_per_product'] / pr['pykfac']:.2f}x")
        print(line)


def print_stoch_check(c):
    if c.get("error"):
        print(f"   statistical check: ERROR {c['error']}")
        return
    flag = "ok" if c["ok"] else "FAILED"
    if c["kind"] == "slq":
        print(f"   first moment of pykfac's density {c['first_moment_pykfac']:.6g} vs the mean v'Hv/v'v of its "
              f"start vectors {c['mean_rayleigh']:.6g}: {c['diff_pykfac']:.1e} of the width {flag}; "
              f"exact tr(H)/D {c['trace_over_D']:.5g} (sampling se of the mean "
              + (f"{c['rayleigh_se']:.2g})" if np.isfinite(c["rayleigh_se"]) else "n/a: one run)"))
        return
    what = "(est - tr)/|tr|" if c["kind"] == "xtrace" else "||est - diag||/||diag||"
    for key, label in (("small", "dense H, small net"), ("bench", "benchmark problem")):
        r = c[key]
        extra = f"{r['net']} D={r['D']}, " if key == "small" else ""
        print(f"   vs exact, {label} ({extra}m={r['num_matvecs']}, {r['seeds']} seeds each): {what} "
              f"pykfac {r['pykfac'][0]:+.3f} +- {r['pykfac'][1]:.3f}, curvlinops {r['curvlinops'][0]:+.3f} "
              f"+- {r['curvlinops'][1]:.3f} (se of the difference {r['se_diff']:.3f}) "
              f"{'ok' if r['ok'] else 'FAILED'}")


def print_summary(rows, peers_on, jac_n, failures):
    print("\n== summary")
    print(HEAD)
    for row in rows:
        print(format_row(row))
    print(f"* the Jacobian is N x K x D values, so its row uses N = {jac_n} whatever --sizes says.")
    print("GFLOP/s from the analytic counts in the script's docstring; %GEMM = GFLOP/s / GEMM rate; "
          "peer/pk > 1 means pykfac is faster.")
    print(f"goals: K-FAC factors >= {100 * KFAC_GEMM_GOAL:.0f}% of GEMM; pykfac >= {PEER_RATIO_GOAL:g}x "
          "faster than the fastest peer on every row.")
    if failures:
        print("\nPEER CHECK FAILURES:")
        for f in failures:
            print("  " + f)


if __name__ == "__main__":
    sys.exit(main())
