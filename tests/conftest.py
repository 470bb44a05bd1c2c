"""Shared fixtures for pykfac's maths tests.

pytest runs in importlib mode (the tests import the INSTALLED pykfac), so the
tests directory is put on sys.path here to make ``import reference`` work.
``python -m pytest`` run from the repository root puts the root first on
sys.path, where the source package (without its compiled _core) would shadow
the build named by PYTHONPATH (e.g. tools/devbuild.sh /tmp/x); the root is
dropped from sys.path in that case only (an in-place build is left alone).
pykfac itself is imported lazily inside the factories, so a broken build
fails the tests that need it, not the collection of every test file.

Factories (each a fixture returning a function):

- ``make_net(sizes, activation, seed, dtype)``: a pk.MLP whose theta is
  overwritten with seeded random weights (W ~ N(0, 1/fan_in), b ~ N(0, 0.5^2)),
  so biases are never trivially zero;
- ``make_data(loss, N, d_in, K, seed)``: X (N, d_in) and labels for the loss
  (mse: float (N, K); ce: int64 (N,); bce: float 0/1 (N,) for K = 1, else (N, K));
- ``ref_of(net)``: a reference.RefMLP built from float64 copies of
  net.layers[i].W / .b and net.activations;
- ``make_problem(loss, hidden, activation, N, ...)``: (net, X, y, ref).
"""
import glob
import os
import sys

import numpy as np
import pytest

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)


def _unshadow_installed_pykfac():
    root = os.path.realpath(os.path.dirname(_HERE))
    if glob.glob(os.path.join(root, "pykfac", "_core*.so")) or glob.glob(
            os.path.join(root, "pykfac", "_core*.pyd")):
        return  # an in-place build: importing from the tree works
    sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.curdir) != root]


_unshadow_installed_pykfac()

import reference  # noqa: E402


def output_width(loss, K=3):
    """Outputs of the test networks for each loss (single-output bce; multi-output
    bce is tested in test_bce_multi.py)."""
    return 1 if loss == "bce" else K


def random_theta(sizes, seed, bias_scale=0.5):
    """A flat theta in the package's layout with seeded random values."""
    rng = np.random.default_rng(seed)
    parts = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        parts.append(rng.normal(size=(n_out, n_in)).ravel() / np.sqrt(n_in))
        parts.append(bias_scale * rng.normal(size=n_out))
    return np.concatenate(parts)


def build_net(sizes, activation="tanh", seed=0, dtype=np.float64):
    import pykfac as pk

    net = pk.MLP(list(sizes), activation=activation, dtype=dtype, seed=seed)
    net.theta[:] = random_theta(sizes, seed + 1000).astype(dtype)
    return net


def build_data(loss, N, d_in, K, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(N, d_in))
    if loss == "mse":
        y = rng.normal(size=(N, K))
    elif loss == "ce":
        y = rng.integers(0, K, size=N).astype(np.int64)
    elif loss == "bce":
        y = rng.integers(0, 2, size=N if K == 1 else (N, K)).astype(np.float64)
    else:
        raise ValueError(loss)
    return X, y


def ref_from_net(net):
    params = [(np.array(layer.W, dtype=np.float64), np.array(layer.b, dtype=np.float64))
              for layer in net.layers]
    return reference.RefMLP(params, list(net.activations))


@pytest.fixture
def make_net():
    return build_net


@pytest.fixture
def make_data():
    return build_data


@pytest.fixture
def ref_of():
    return ref_from_net


@pytest.fixture
def make_problem():
    def problem(loss, hidden=(4, 4), activation="tanh", N=6, d_in=3, K=3, seed=0,
                dtype=np.float64):
        K = output_width(loss, K)
        sizes = [d_in, *hidden, K]
        net = build_net(sizes, activation, seed, dtype)
        X, y = build_data(loss, N, d_in, K, seed + 1)
        return net, X, y, ref_from_net(net)

    return problem
