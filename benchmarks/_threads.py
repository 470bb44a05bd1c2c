"""``--threads N`` for the benchmark scripts. Import this module BEFORE numpy,
pykfac or torch: OpenBLAS and OpenMP read their thread counts when they load."""
import os
import sys


def _threads_arg(argv):
    for i, a in enumerate(argv):
        if a == "--threads" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--threads="):
            return a.split("=", 1)[1]
    return None


REQUESTED = _threads_arg(sys.argv[1:])
if REQUESTED:
    for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = REQUESTED
