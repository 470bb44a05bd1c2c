"""pykfac: exact and Kronecker-factored curvature of dense neural networks.

Jacobians, Hessians, generalised Gauss-Newton (GGN) and Fisher matrices,
K-FAC/KFLR/KFRA approximations, on NumPy arrays, computed by a C core over
OpenBLAS. Conventions (sum over data, parameter order, Kronecker order):
see the README and CONVENTIONS.md.
"""
import numpy as _np

from . import _core, linalg
from ._core import LinAlgError
from .curvature import (
    EFOperator,
    FisherMCOperator,
    GGNOperator,
    HessianOperator,
    JacobianOperator,
    OutputCurvature,
    diag_ggn,
    diag_hessian,
    empirical_fisher_diag,
    ggn,
    ggn_matvec,
    grad_per_sample,
    hessian,
    hvp,
    jacobian,
    jacobian_factors,
    jvp,
    loss,
    loss_and_grad,
    loss_per_sample,
    output_curvature,
    residual_matvec,
    trace_estimate,
    diag_estimate,
    squared_frobenius_estimate,
    vjp,
)
from .kfac import ekfac, kfac
from .kron import EKFACCurvature, KronCurvature
from .operators import InverseOperator, SubmatrixOperator
from .laplace import Laplace
from .spectrum import spectral_density
from .mlp import ACTIVATIONS, MLP, Layer
from . import metrics, optim
from .train import train
from .marglik import marglik_training

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS",
    "EFOperator",
    "EKFACCurvature",
    "FisherMCOperator",
    "GGNOperator",
    "HessianOperator",
    "InverseOperator",
    "JacobianOperator",
    "KronCurvature",
    "Layer",
    "Laplace",
    "LinAlgError",
    "MLP",
    "OutputCurvature",
    "diag_ggn",
    "ekfac",
    "diag_hessian",
    "empirical_fisher_diag",
    "ggn",
    "ggn_matvec",
    "grad_per_sample",
    "hessian",
    "hvp",
    "jacobian",
    "jacobian_factors",
    "jvp",
    "kfac",
    "linalg",
    "metrics",
    "loss",
    "loss_and_grad",
    "loss_per_sample",
    "marglik_training",
    "optim",
    "output_curvature",
    "residual_matvec",
    "set_num_threads",
    "SubmatrixOperator",
    "spectral_density",
    "show_config",
    "trace_estimate",
    "diag_estimate",
    "squared_frobenius_estimate",
    "train",
    "vjp",
]


class set_num_threads:
    """Set how many threads the BLAS under pykfac's C core uses (NumPy's own
    BLAS is not affected). Returns an object that also works as a context
    manager restoring the previous count::

        pk.set_num_threads(1)                 # from now on
        with pk.set_num_threads(1):           # only inside the block
            pk.kfac(net, data, "ce")

    One thread is often faster for small networks, and always when other
    processes keep the cores busy: OpenBLAS threads wait for each other by
    spinning. ``num_threads`` holds the count now in effect, ``previous`` the one
    before. Not for use while other Python threads run pykfac kernels.
    """

    def __init__(self, n):
        if isinstance(n, bool) or not isinstance(n, (int, _np.integer)):
            raise TypeError(f"n: expected an int, got {type(n).__name__}")
        self.previous = _core.blas_info()["num_threads"]
        self.num_threads = _core.set_blas_threads(int(n))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        _core.set_blas_threads(self.previous)
        return False


def show_config(print_out=True):
    """Report the build: pykfac and NumPy versions and the BLAS the C core uses.

    Returns a dict with keys ``version``, ``numpy``, ``blas_source`` (how it
    was chosen at build time), ``blas_library`` (path of the loaded shared
    object providing dgemm), ``blas_config``, ``blas_corename`` and
    ``blas_threads``; prints it unless ``print_out`` is False.
    """
    import numpy

    info = _core.blas_info()
    cfg = {
        "version": __version__,
        "numpy": numpy.__version__,
        "blas_source": info["source"],
        "blas_library": info["library"],
        "blas_config": info["config"].strip(),
        "blas_corename": info["corename"],
        "blas_threads": info["num_threads"],
    }
    if print_out:
        for k, v in cfg.items():
            print(f"{k:>14}: {v}")
    return cfg
