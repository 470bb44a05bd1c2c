"""pykfac: exact and Kronecker-factored curvature of dense neural networks.

Jacobians, Hessians, generalised Gauss-Newton (GGN) and Fisher matrices,
K-FAC/KFLR/KFRA approximations, on NumPy arrays, computed by a C core over
OpenBLAS. Conventions (sum over data, parameter order, Kronecker order):
see the README and CONVENTIONS.md.
"""
from . import _core, linalg
from ._core import LinAlgError
from .curvature import (
    GGNOperator,
    HessianOperator,
    OutputCurvature,
    diag_ggn,
    empirical_fisher_diag,
    ggn,
    ggn_matvec,
    hessian,
    hvp,
    jacobian,
    jvp,
    loss,
    loss_and_grad,
    loss_per_sample,
    output_curvature,
    residual_matvec,
    vjp,
)
from .kfac import kfac
from .kron import KronCurvature
from .laplace import Laplace
from .mlp import ACTIVATIONS, MLP, Layer
from . import metrics, optim
from .train import train

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS",
    "GGNOperator",
    "HessianOperator",
    "KronCurvature",
    "Layer",
    "Laplace",
    "LinAlgError",
    "MLP",
    "OutputCurvature",
    "diag_ggn",
    "empirical_fisher_diag",
    "ggn",
    "ggn_matvec",
    "hessian",
    "hvp",
    "jacobian",
    "jvp",
    "kfac",
    "linalg",
    "metrics",
    "loss",
    "loss_and_grad",
    "loss_per_sample",
    "optim",
    "output_curvature",
    "residual_matvec",
    "show_config",
    "train",
    "vjp",
]


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
