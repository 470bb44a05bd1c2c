"""Dense networks (multi-layer perceptrons) whose parameters live in ONE flat vector.

Parameter order (CONVENTIONS.md): ``theta = [W_0.ravel(), b_0, W_1.ravel(), b_1, ...]``
with ``W_l`` of shape ``(out, in)`` like ``torch.nn.Linear`` -- the order of
PyTorch's ``parameters_to_vector`` for ``nn.Sequential(Linear, act, Linear, ...)``.
"""
import numbers

import numpy as np

from . import _core
from ._data import resolve_seed

__all__ = ["MLP", "Layer", "ACTIVATIONS"]

_MAX_PARAMS = 2**31 - 1

#: Hidden-layer activations; the position is the C core's code (pk_act_t).
#: leaky_relu uses slope 0.01, elu alpha 1, softplus beta 1, gelu the exact erf
#: form (PyTorch's defaults), all with exact first and second derivatives.
ACTIVATIONS = ("identity", "relu", "leaky_relu", "elu", "tanh", "sigmoid", "softplus", "gelu")


def _model_dtype(dtype):
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype: expected float32 or float64, got {dtype!r}") from None
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"dtype: expected float32 or float64, got {dt}")
    return dt


class Layer:
    """One dense layer: ``s = a @ W.T + b``; ``W`` and ``b`` are views into ``MLP.theta``."""

    def __init__(self, W, b, activation, offset):
        self.W = W
        self.b = b
        self.activation = activation  # None for the (linear) output layer
        self.offset = offset  # position of W in theta; b follows W

    @property
    def in_features(self):
        return self.W.shape[1]

    @property
    def out_features(self):
        return self.W.shape[0]

    @property
    def num_params(self):
        return self.W.size + self.b.size

    @property
    def slice(self):
        """This layer's parameters within theta (and its block of any (D, D) matrix)."""
        return slice(self.offset, self.offset + self.num_params)

    def __repr__(self):
        act = self.activation or "linear output"
        return f"Layer({self.in_features} -> {self.out_features}, {act})"


class MLP:
    """A multi-layer perceptron with biases; the output layer is linear.

    Parameters
    ----------
    sizes : sequence of int
        Widths ``[d_in, h_1, ..., K]`` (at least two entries, each >= 1).
    activation : str or sequence of str
        One name for every hidden layer, or one per hidden layer; see ``ACTIVATIONS``.
    dtype : float32 or float64
        Parameters and outputs use this dtype; inputs are cast to it.
    seed : int or None
        Initialisation like ``torch.nn.Linear``: W and b uniform in
        ``[-1/sqrt(in), 1/sqrt(in)]``, drawn from ``numpy.random.default_rng(seed)``.

    Attributes
    ----------
    theta : (D,) ndarray
        All parameters (writable; ``layers[i].W`` / ``.b`` are views into it).
        Assigning ``net.theta = v`` copies ``v`` in, so the views stay valid.
    layers : list of Layer
    """

    def __init__(self, sizes, activation="tanh", dtype=np.float64, seed=0):
        sizes = self._check_sizes(sizes)
        self._dtype = _model_dtype(dtype)
        seed = resolve_seed(seed)
        self._sizes = sizes
        self._activations = self._check_activations(activation, len(sizes) - 2)
        self._act_codes = tuple(ACTIVATIONS.index(a) for a in self._activations)
        D = sum(o * (i + 1) for i, o in zip(sizes[:-1], sizes[1:]))
        if D > _MAX_PARAMS:
            raise ValueError(f"sizes: {D} parameters exceed the 32-bit BLAS interface (at most {_MAX_PARAMS})")
        _core.check_memory(float(D) * self._dtype.itemsize, "MLP")  # MemoryError before allocating
        self._theta = np.empty(D, dtype=self._dtype)
        self._make_layers()
        rng = np.random.default_rng(seed)
        for layer in self.layers:
            bound = 1.0 / np.sqrt(layer.in_features)
            layer.W[...] = rng.uniform(-bound, bound, size=layer.W.shape)
            layer.b[...] = rng.uniform(-bound, bound, size=layer.b.shape)

    @staticmethod
    def _check_sizes(sizes):
        try:
            sizes = tuple(sizes)
        except TypeError:
            raise TypeError(f"sizes: expected a sequence of ints, got {type(sizes).__name__}") from None
        if len(sizes) < 2 or len(sizes) > 65:
            raise ValueError(f"sizes: expected 2 to 65 layer widths, got {len(sizes)}")
        for s in sizes:
            if not isinstance(s, numbers.Integral) or isinstance(s, bool):
                raise TypeError(f"sizes: expected ints, got {s!r}")
            if s < 1:
                raise ValueError(f"sizes: every width must be >= 1, got {list(sizes)}")
        return tuple(int(s) for s in sizes)

    @staticmethod
    def _check_activations(activation, n_hidden):
        if isinstance(activation, str):
            if activation not in ACTIVATIONS:
                raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {activation!r}")
            acts = [activation] * n_hidden
        elif isinstance(activation, (list, tuple)):
            acts = list(activation)
        else:
            raise TypeError(f"activation: expected a name or a list of names, got {type(activation).__name__}")
        if len(acts) != n_hidden:
            raise ValueError(f"activation: expected one name or {n_hidden} names (one per hidden layer), got {len(acts)}")
        for a in acts:
            if a not in ACTIVATIONS:
                raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {a!r}")
        return tuple(acts)

    def _make_layers(self):
        self.layers = []
        off = 0
        for l, (i, o) in enumerate(zip(self._sizes[:-1], self._sizes[1:])):
            W = self._theta[off : off + o * i].reshape(o, i)
            b = self._theta[off + o * i : off + o * (i + 1)]
            act = self._activations[l] if l < len(self._activations) else None
            self.layers.append(Layer(W, b, act, off))
            off += o * (i + 1)

    @classmethod
    def from_params(cls, params, activation="tanh", dtype=None):
        """Build a network from ``[(W_0, b_0), (W_1, b_1), ...]`` (arrays are copied).

        ``W_l`` has shape ``(out, in)``; ``dtype`` defaults to the first W's
        dtype when it is float32/float64, else float64.
        """
        try:
            params = list(params)
        except TypeError:
            raise TypeError(f"params: expected a sequence of (W, b) pairs, got {type(params).__name__}") from None
        if not params:
            raise ValueError("params: expected at least one (W, b) pair")
        Ws, bs = [], []
        for l, pair in enumerate(params):
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise ValueError(f"params[{l}]: expected a (W, b) pair")
            W, b = np.asarray(pair[0]), np.asarray(pair[1])
            for name, arr in (("W", W), ("b", b)):
                if arr.dtype.kind not in "iuf":
                    raise TypeError(f"params[{l}]: {name} must be a real array, got dtype {arr.dtype}")
            if W.ndim != 2:
                raise ValueError(f"params[{l}]: W must be 2-D (out, in), got shape {W.shape}")
            if b.shape != (W.shape[0],):
                raise ValueError(f"params[{l}]: b must have shape ({W.shape[0]},), got {b.shape}")
            if l and W.shape[1] != Ws[-1].shape[0]:
                raise ValueError(f"params[{l}]: W has {W.shape[1]} inputs but the previous layer has {Ws[-1].shape[0]} outputs")
            Ws.append(W)
            bs.append(b)
        if dtype is None:
            dtype = Ws[0].dtype if Ws[0].dtype in (np.float32, np.float64) else np.float64
        sizes = [Ws[0].shape[1]] + [W.shape[0] for W in Ws]
        net = cls(sizes, activation=activation, dtype=dtype)
        for layer, W, b in zip(net.layers, Ws, bs):
            layer.W[...] = W
            layer.b[...] = b
        return net

    def copy(self):
        """A deep copy (its own theta)."""
        new = MLP(self._sizes, activation=list(self._activations), dtype=self._dtype)
        new.theta = self._theta
        return new

    @property
    def theta(self):
        return self._theta

    @theta.setter
    def theta(self, value):
        value = np.asarray(value)
        if value.dtype.kind not in "iuf":
            raise TypeError(f"theta: expected a real array, got dtype {value.dtype}")
        if value.shape != self._theta.shape:
            raise ValueError(f"theta: expected shape ({self._theta.size},), got {value.shape}")
        self._theta[...] = value

    @property
    def sizes(self):
        return self._sizes

    @property
    def activations(self):
        return self._activations

    @property
    def dtype(self):
        return self._dtype

    @property
    def num_params(self):
        return self._theta.size

    @property
    def n_layers(self):
        return len(self._sizes) - 1

    @property
    def n_outputs(self):
        return self._sizes[-1]

    def __call__(self, X):
        """Outputs ``f(X)`` of shape (N, K) in the model's dtype."""
        return _core.forward(self, X)

    def features(self, X):
        """Penultimate activations (input of the last layer), shape (N, sizes[-2])."""
        return _core.features(self, X)

    def __repr__(self):
        acts = ", ".join(self._activations) or "none"
        return f"MLP(sizes={list(self._sizes)}, activations=[{acts}], dtype={self._dtype.name}, D={self.num_params})"
