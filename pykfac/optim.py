r"""Optimisers: K-FAC (Martens & Grosse 2015) with its Gauss-Newton relatives
(KFLR, KFRA of Botev et al. 2017), and the first-order baselines SGD and Adam.

Objective. Every optimiser here minimises, on the batch ``(X, y)`` it is
given,

.. math:: h(\theta) = \frac1N \sum_{n=1}^N \ell(y_n, f(x_n, \theta)) + \frac\eta2 \|\theta\|^2,

the batch MEAN of the per-sample loss (so learning rates and damping do not
depend on the batch size) plus an L2 term with ``weight_decay`` η on all
parameters. ``step(X, y)`` returns the mean batch loss (without the L2 term)
at the parameters BEFORE the update; ``pk.loss`` returns the sum, i.e. N
times that. Curvatures are those of the mean as well: the K-FAC factors are
``A_l = E[ā ā^T]`` and ``G_l = E[g g^T]`` with ``g`` the gradient of ONE
sample's loss, and ``F = G_sum / N`` for the exact GGN.

The update of all three optimisers is computed in the C core (csrc/optim.c);
this module keeps the state and the scalar bookkeeping.
"""
import math
import numbers

import numpy as np

from . import _core, _persist
from ._data import resolve_seed
from .curvature import _net
from .mlp import MLP

__all__ = ["Optimizer", "KFAC", "SGD", "Adam"]

_LOSSES = ("mse", "ce", "bce")
_CURVATURES = {"exact": 0, "mc": 1, "empirical": 2, "kfra": 3}
_STRUCTURES = ("blockdiag", "tridiag")
# save files (Optimizer.save / load)
_FILE_FORMAT = "pykfac-optimizer"
FORMAT_VERSION = 1


# ---- argument checks -----------------------------------------------------------
def _real(value, name, lo=None, lo_open=False, hi=None, hi_open=False, allow_none=False):
    """A finite float within the given bounds, or None when allowed."""
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a real number, got {type(value).__name__}")
    v = float(value)
    bad = not math.isfinite(v)
    if lo is not None:
        bad |= v <= lo if lo_open else v < lo
    if hi is not None:
        bad |= v >= hi if hi_open else v > hi
    if bad:
        rng = []
        if lo is not None:
            rng.append(f"{'>' if lo_open else '>='} {lo:g}")
        if hi is not None:
            rng.append(f"{'<' if hi_open else '<='} {hi:g}")
        what = "a finite number" + (" " + " and ".join(rng) if rng else "")
        raise ValueError(f"{name}: expected {what}, got {value!r}")
    return v


def _weight_decay(value, D, vector_ok):
    """η: a float >= 0, or (SGD, Adam) one finite value >= 0 per parameter (float64, read-only)."""
    if np.ndim(value) == 0 or not vector_ok:
        return _real(value, "weight_decay", lo=0.0)
    arr = np.asarray(value)
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"weight_decay: expected real numbers, got dtype {arr.dtype}")
    if arr.shape != (D,):
        raise ValueError(f"weight_decay: expected a number or shape ({D},) (one per parameter), got {arr.shape}")
    arr = np.array(arr, dtype=np.float64)
    if not np.all(np.isfinite(arr) & (arr >= 0)):
        raise ValueError("weight_decay: expected finite values >= 0")
    arr.setflags(write=False)
    return arr


def _int(value, name, lo=1):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if value < lo:
        raise ValueError(f"{name}: expected an int >= {lo}, got {value}")
    return int(value)


def _choice(value, name, options):
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"{name}: expected one of {tuple(options)}, got {value!r}")
    return value


def _check_finite(opt, value, theta):
    """FloatingPointError when the iteration has diverged (the loss or the
    updated parameters are not finite): a clear error instead of NaN later."""
    if not math.isfinite(value) or not np.isfinite(theta).all():
        hint = "lower lr" if getattr(opt, "lr", None) is not None else "raise damping"
        raise FloatingPointError(f"{type(opt).__name__}: the iteration diverged (non-finite loss "
                                 f"or parameters at step {opt.steps + 1}); {hint}")


def _batch_size(X):
    shape = np.shape(X)
    if len(shape) != 2:
        raise ValueError(f"X: expected a 2-D array of shape (N, d_in), got shape {shape}")
    return int(shape[0])


class Optimizer:
    """Common part of the optimisers: the network, the loss and the objective h.

    Parameters
    ----------
    net : MLP
        Updated in place (``net.theta``).
    loss : {"mse", "ce", "bce"}
        ``"bce"``: one logistic loss per output, labels (N, K) 0/1 ((N,) if K = 1).
    weight_decay : float >= 0, or (D,) array (SGD, Adam)
        η of the L2 term ``η/2 ‖θ‖²`` in h; per parameter ``½ Σ ηᵢ θᵢ²``, e.g.
        a Laplace prior precision times σ²T/N (:func:`pykfac.marglik_training`).
    """

    #: whether weight_decay may be one value per parameter
    _vector_decay = False

    def __init__(self, net, loss, weight_decay=0.0):
        self.net = _net(net)
        self.loss = _choice(loss, "loss", _LOSSES)
        K = self.net.n_outputs
        if self.loss == "ce" and K < 2:
            raise ValueError("loss: 'ce' needs a network with at least 2 outputs (use 'bce' for 1)")
        self.weight_decay = _weight_decay(weight_decay, self.net.num_params, self._vector_decay)
        self.steps = 0

    def __repr__(self):
        return f"{type(self).__name__}(net={self.net!r}, loss={self.loss!r}, steps={self.steps})"

    def _sum_loss_mean_grad(self, X, y):
        """(summed batch loss, gradient of the MEAN batch loss, N)."""
        N = _batch_size(X)
        total, g = _core.loss_grad(self.net, X, y, self.loss, True)
        g /= g.dtype.type(N)
        return total, g, N

    def _objective_grad(self, X, y):
        """(mean batch loss, h(θ), ∇h(θ)) at the current parameters, and N."""
        total, g, N = self._sum_loss_mean_grad(X, y)
        value = total / N
        return value, value + self._decay(g), g, N

    def _decay(self, g=None):
        """½ Σ ηᵢ θᵢ² at the current parameters; with g, also adds ηθ to g in place."""
        theta, wd = self.net.theta, self.weight_decay
        if np.ndim(wd) == 0:
            if not wd:
                return 0.0
            if g is not None:
                g += g.dtype.type(wd) * theta
            return 0.5 * wd * float(np.dot(theta, theta))
        wt = wd * theta
        if g is not None:
            g += wt.astype(g.dtype)
        return 0.5 * float(np.dot(wt, theta))

    def _kernel_decay(self, g):
        """The η to hand the C update: a per-parameter η is added to g here instead."""
        if np.ndim(self.weight_decay) == 0:
            return self.weight_decay
        self._decay(g)
        return 0.0

    def _h(self, X, y, N):
        """h(θ) at the current parameters (one forward pass)."""
        return _core.loss_grad(self.net, X, y, self.loss, False)[0] / N + self._decay()

    def step(self, X, y):
        """One update on the batch ``(X, y)``; returns the mean batch loss before it."""
        raise NotImplementedError

    # ---- state ------------------------------------------------------------
    def _check_state(self, state, kind):
        if not isinstance(state, dict) or state.get("type") != kind:
            got = state.get("type") if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"state: expected a {kind} state_dict, got {got!r}")
        if tuple(state.get("sizes", ())) != self.net.sizes:
            raise ValueError(f"state: saved for a network with sizes {tuple(state.get('sizes', ()))}, "
                             f"this one has {self.net.sizes}")
        if np.dtype(state.get("dtype")) != self.net.dtype:
            raise ValueError(f"state: saved for dtype {state.get('dtype')}, the network is {self.net.dtype}")

    def _array(self, state, key, shape):
        arr = np.asarray(state[key])
        if arr.shape != tuple(shape):
            raise ValueError(f"state[{key!r}]: expected shape {tuple(shape)}, got {arr.shape}")
        return np.array(arr, dtype=self.net.dtype, order="C", copy=True)

    # ---- files --------------------------------------------------------------
    def _hyper(self):
        """Constructor arguments besides net and loss (JSON values)."""
        raise NotImplementedError

    def save(self, path):
        """Save a checkpoint to an ``.npz`` file (no pickle): the optimiser's
        class, loss and hyperparameters, the network (sizes, activations,
        dtype, parameters) and the full :meth:`state_dict`, with a format name,
        version and a SHA-256 checksum over the metadata and every array.
        :meth:`load` resumes the run bitwise identically."""
        arrays = {"net_theta": self.net.theta}
        meta = {"type": type(self).__name__, "loss": self.loss,
                "hyper": _state_to_tree(self._hyper(), "hyper", arrays),
                "net_sizes": list(self.net.sizes), "net_activations": list(self.net.activations),
                "dtype": self.net.dtype.name, "state": _state_to_tree(self.state_dict(), "", arrays)}
        _persist.write(path, _FILE_FORMAT, FORMAT_VERSION, meta, arrays)

    @classmethod
    def load(cls, path, net=None):
        """Load an optimiser saved by :meth:`save`, ready to continue.

        ``KFAC.load`` / ``SGD.load`` / ``Adam.load`` accept only their own kind
        of file (``Optimizer.load`` any of them) and return a new optimiser
        with the saved hyperparameters and state.

        Parameters
        ----------
        path : str, path-like or binary file
        net : MLP, optional
            The network to train on: it must have the saved sizes,
            activations and dtype (else ValueError), and its parameters are SET
            to the saved ones. Without it a new network is built from the file
            (``opt.net``).

        Raises
        ------
        ValueError
            Naming the file if it is not a pykfac optimiser file, holds another
            kind of optimiser, is truncated or corrupted (checksum), has
            another format version, or lacks, adds or reshapes an array.
        """
        meta, files = _persist.read(path, _FILE_FORMAT, (FORMAT_VERSION,), "optimizer")
        classes = {"SGD": SGD, "Adam": Adam, "KFAC": KFAC}
        kind = meta.get("type")
        if not isinstance(kind, str) or kind not in classes:
            raise ValueError(f"{path}: invalid metadata (type {kind!r}, expected one of {tuple(classes)})")
        if cls is not Optimizer and classes[kind] is not cls:
            raise ValueError(f"{path}: holds a {kind} optimiser, not {cls.__name__}")
        with _persist.malformed(path):
            dtype = _persist.float_dtype(meta["dtype"])
            sizes = _persist.int_list(meta["net_sizes"], "net_sizes")
            acts = meta["net_activations"]
            if len(sizes) < 2 or not isinstance(acts, list) or not all(isinstance(a, str) for a in acts):
                raise ValueError(f"net_sizes / net_activations: {sizes!r} / {acts!r}")
            spec = {"net_theta": ((sum((i + 1) * o for i, o in zip(sizes[:-1], sizes[1:])),), dtype)}
            names = _tree_arrays(meta["state"])
            hyper_names = _tree_arrays(meta["hyper"])  # a per-parameter weight decay (float64)
            if "net_theta" in names + hyper_names or len(set(names + hyper_names)) != len(names + hyper_names):
                raise ValueError("state: array references repeat or name net_theta")
            spec.update({name: (None, dtype) for name in names})
            spec.update({name: (None, np.float64) for name in hyper_names})
        _persist.check_arrays(path, files, spec)
        if net is None:
            with _persist.malformed(path):
                net = MLP(sizes, activation=acts or "tanh", dtype=dtype)
        else:
            net = _net(net)
            got = (list(net.sizes), list(net.activations), net.dtype.name)
            if got != (sizes, acts, dtype.name):
                raise ValueError(f"net: does not match the saved optimiser: sizes/activations/dtype "
                                 f"{(sizes, acts, dtype.name)}, got {got}")
        with _persist.malformed(path):
            hyper = _tree_to_state(meta["hyper"], files)
            if not isinstance(hyper, dict):
                raise ValueError(f"hyper: expected a dict, got {hyper!r}")
            opt = classes[kind](net, meta["loss"], **hyper)
            opt.load_state_dict(_tree_to_state(meta["state"], files))
        # only now, when everything is valid: a failed load leaves the network alone
        net.theta = files["net_theta"]
        return opt


# ---- save files: a state_dict as JSON with its arrays stored alongside ---------------
def _state_to_tree(value, name, arrays):
    """JSON form of a state_dict value; arrays go to ``arrays`` under a name
    derived from their place ({"array": name} marks them in the tree)."""
    if isinstance(value, np.ndarray):
        arrays[name] = value
        return {"array": name}
    if isinstance(value, dict):
        return {k: _state_to_tree(v, f"{name}_{k}" if name else k, arrays) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_state_to_tree(v, f"{name}_{i}", arrays) for i, v in enumerate(value)]
    return value


def _tree_arrays(tree):
    """Names of the arrays a JSON tree refers to."""
    if isinstance(tree, dict):
        if set(tree) == {"array"}:
            if not isinstance(tree["array"], str):
                raise ValueError(f"state: bad array reference {tree!r}")
            return [tree["array"]]
        return [n for v in tree.values() for n in _tree_arrays(v)]
    if isinstance(tree, list):
        return [n for v in tree for n in _tree_arrays(v)]
    return []


def _tree_to_state(tree, arrays):
    if isinstance(tree, dict):
        if set(tree) == {"array"}:
            return arrays[tree["array"]]
        return {k: _tree_to_state(v, arrays) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_tree_to_state(v, arrays) for v in tree]
    return tree


# ---- first-order baselines ------------------------------------------------------
class SGD(Optimizer):
    r"""Stochastic gradient descent with (Nesterov) momentum.

    PyTorch's ``torch.optim.SGD`` semantics (no dampening) on h:
    ``g = ∇h``, ``b ← μ b + g`` (``b = g`` on the first step),
    ``θ ← θ − lr (g + μ b)`` with Nesterov, ``θ ← θ − lr b`` without.

    Parameters
    ----------
    net : MLP
    loss : {"mse", "ce", "bce"}
    lr : float > 0
    momentum : float in [0, 1)
    nesterov : bool
        Needs ``momentum > 0``.
    weight_decay : float >= 0 or (D,) array
    """

    _vector_decay = True

    def __init__(self, net, loss, lr, momentum=0.9, nesterov=True, weight_decay=0.0):
        super().__init__(net, loss, weight_decay)
        self.lr = _real(lr, "lr", lo=0.0, lo_open=True)
        self.momentum = _real(momentum, "momentum", lo=0.0, hi=1.0, hi_open=True)
        if not isinstance(nesterov, (bool, np.bool_)):
            raise TypeError(f"nesterov: expected a bool, got {type(nesterov).__name__}")
        if nesterov and self.momentum == 0.0:
            raise ValueError("nesterov: Nesterov momentum needs momentum > 0")
        self.nesterov = bool(nesterov)
        self._buf = np.zeros(self.net.num_params, dtype=self.net.dtype)

    def step(self, X, y):
        """One SGD update on ``(X, y)``; returns the mean batch loss before it."""
        total, g, N = self._sum_loss_mean_grad(X, y)
        if not (math.isfinite(total) and np.isfinite(g).all()):
            _check_finite(self, math.nan, self.net.theta)
        _core.sgd_update(self.net.theta, g, self._buf, self.lr, self.momentum, self.nesterov,
                         self._kernel_decay(g), self.steps == 0)
        _check_finite(self, total, self.net.theta)
        self.steps += 1
        return total / N

    def _hyper(self):
        return {"lr": self.lr, "momentum": self.momentum, "nesterov": self.nesterov,
                "weight_decay": self.weight_decay}

    def state_dict(self):
        """Copy of the state: step count and momentum buffer."""
        return {"type": "SGD", "sizes": self.net.sizes, "dtype": self.net.dtype.name,
                "steps": self.steps, "buf": self._buf.copy()}

    def load_state_dict(self, state):
        """Restore a state from :meth:`state_dict` (hyperparameters stay as constructed)."""
        self._check_state(state, "SGD")
        self._buf = self._array(state, "buf", (self.net.num_params,))
        self.steps = _int(state["steps"], "state['steps']", lo=0)


class Adam(Optimizer):
    r"""Adam (Kingma & Ba 2015) with PyTorch's ``torch.optim.Adam`` semantics on h.

    ``m ← β₁ m + (1−β₁) g``, ``v ← β₂ v + (1−β₂) g²``,
    ``θ ← θ − lr m̂ / (√v̂ + ε)`` with the bias corrections ``m̂ = m / (1−β₁ᵗ)``,
    ``v̂ = v / (1−β₂ᵗ)``; ``g = ∇h`` includes the (coupled) weight decay.

    Parameters
    ----------
    net : MLP
    loss : {"mse", "ce", "bce"}
    lr : float > 0
    betas : (float, float) in [0, 1)
    eps : float >= 0
    weight_decay : float >= 0 or (D,) array
    """

    _vector_decay = True

    def __init__(self, net, loss, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(net, loss, weight_decay)
        self.lr = _real(lr, "lr", lo=0.0, lo_open=True)
        try:
            b1, b2 = betas
        except (TypeError, ValueError):
            raise TypeError(f"betas: expected a pair of numbers, got {betas!r}") from None
        self.betas = (_real(b1, "betas[0]", lo=0.0, hi=1.0, hi_open=True),
                      _real(b2, "betas[1]", lo=0.0, hi=1.0, hi_open=True))
        self.eps = _real(eps, "eps", lo=0.0)
        self._m = np.zeros(self.net.num_params, dtype=self.net.dtype)
        self._v = np.zeros(self.net.num_params, dtype=self.net.dtype)

    def step(self, X, y):
        """One Adam update on ``(X, y)``; returns the mean batch loss before it."""
        total, g, N = self._sum_loss_mean_grad(X, y)
        if not (math.isfinite(total) and np.isfinite(g).all()):
            _check_finite(self, math.nan, self.net.theta)
        _core.adam_update(self.net.theta, g, self._m, self._v, self.steps + 1, self.lr,
                          self.betas[0], self.betas[1], self.eps, self._kernel_decay(g))
        _check_finite(self, total, self.net.theta)
        self.steps += 1
        return total / N

    def _hyper(self):
        return {"lr": self.lr, "betas": list(self.betas), "eps": self.eps,
                "weight_decay": self.weight_decay}

    def state_dict(self):
        """Copy of the state: step count and both moment estimates."""
        return {"type": "Adam", "sizes": self.net.sizes, "dtype": self.net.dtype.name,
                "steps": self.steps, "m": self._m.copy(), "v": self._v.copy()}

    def load_state_dict(self, state):
        """Restore a state from :meth:`state_dict` (hyperparameters stay as constructed)."""
        self._check_state(state, "Adam")
        D = self.net.num_params
        self._m = self._array(state, "m", (D,))
        self._v = self._array(state, "v", (D,))
        self.steps = _int(state["steps"], "state['steps']", lo=0)


# ---- K-FAC ----------------------------------------------------------------------
def _step_seed(seed, k):
    """The MC-sampling seed of step k: a pure function of (seed, k), so a run
    resumed from a state_dict draws exactly the same targets."""
    return int(np.random.SeedSequence([seed, k]).generate_state(1, dtype=np.uint64)[0])


class KFAC(Optimizer):
    r"""K-FAC: Kronecker-factored approximate natural gradient (Martens & Grosse 2015).

    Each step on a batch ``(X, y)`` of N samples:

    1. **Statistics.** ``A_l = E[ā ā^T]`` and ``G_l = E[g g^T]`` (and, for
       ``structure="tridiag"``, the cross-layer ``E[ā_l ā_{l+1}^T]``,
       ``E[g_l g_{l+1}^T]``) on the batch, with g from targets SAMPLED from
       the model's predictive (``curvature="mc"``), from the exact square root
       of the output Hessian (``"exact"``, KFLR), from the true labels
       (``"empirical"``), or Botev et al.'s recursion (``"kfra"``; no cross
       statistics, so block-diagonal only). They enter exponential moving
       averages with decay ``ε_k = min(1 − 1/k, ema_decay)`` at step k.
    2. **Inverse** (refreshed on steps 1, 2, 3 and every ``inverse_every``):
       factored Tikhonov damping ``G̃ = G + (γ/π) I``, ``Ã = A + γπ I`` with
       ``π_l = √((tr A_l / q_l) / (tr G_l / out_l))``, and
       ``F̆⁻¹ = ⊕_l (G̃_l ⊗ Ã_l)⁻¹`` (``"blockdiag"``) or the block-tridiagonal
       ``F̂⁻¹ = Ξ^T Λ Ξ`` of section 4.3 (``"tridiag"``; see
       ``csrc/pk_optim.h`` and CONVENTIONS.md).
    3. **Direction** ``Δ = −F̆⁻¹ ∇h``.
    4. **Step** ``δ = α Δ + μ δ₀`` (δ₀: the previous step). With
       ``lr=None`` and ``momentum=None``, α and μ minimise the quadratic model
       ``M(δ) = ½ δ^T (F + (λ+η) I) δ + ∇h^T δ`` with the EXACT GGN ``F`` of
       the mean loss on the batch: a 2 × 2 linear system (1 × 1 on the
       first step, or when one of them is fixed). The model needs only the
       Gram matrix ``V^T F V`` of ``V = [Δ, δ₀]``, i.e. exactly
       ``V^T pk.ggn_matvec(net, X, y, loss, V) / N``; it is computed from one
       forward-mode pass ``J V`` (``Σ_n (J_n V)^T Λ_n (J_n V)``, C function
       ``pk_ggn_gram``), cheaper than the products ``F V``.
       Fixed values are used as given.
    5. **Damping** (``adapt_damping``): every ``damping_every`` steps the
       reduction ratio ``ρ = (h(θ+δ) − h(θ)) / (M₀(δ) − M₀(0))`` (real change
       of h on the batch over the change predicted by the undamped model
       ``M₀`` with ``F + ηI``; ρ = −∞ when M₀ predicts no decrease) moves
       λ: ``λ ← ω λ`` if ρ > 3/4,
       ``λ ← λ / ω`` if ρ < 1/4, ``ω = (19/20)^damping_every``. Every
       ``gamma_every`` (20) steps γ is chosen among ``{γ, ω₂γ, γ/ω₂}``,
       ``ω₂ = (19/20)^(gamma_every/2)``, as the one whose step gives the
       lowest ``M(δ)`` (section 6.6); γ starts at ``√(λ+η)`` and is kept
       ``≥ √η``.
    6. Optional ``kl_clip`` κ: the step is shrunk so that its curvature norm
       ``δ^T F δ ≤ κ`` (exact batch GGN when α is adaptive; ``α²|Δ^T ∇h|``,
       the K-FAC norm of the preconditioned gradient, when ``lr`` is fixed).

    Parameters
    ----------
    net : MLP
    loss : {"ce", "mse", "bce"}
    lr, momentum : float or None
        Fixed α (> 0) and μ (>= 0), or None to choose them by the quadratic model.
    damping : float >= 0
        Initial λ.
    weight_decay : float >= 0
        η; its curvature ηI is part of the damping (γ = √(λ+η)).
    ema_decay : float in [0, 1)
    inverse_every, damping_every, gamma_every : int >= 1
    structure : {"blockdiag", "tridiag"}
    curvature : {"mc", "exact", "empirical", "kfra"}
    adapt_damping : bool
        Levenberg–Marquardt λ and the γ search; False keeps λ and
        γ = √(λ+η) fixed.
    min_damping : float >= 0
        Floor for the adapted λ (as kfac-jax's ``min_damping``). ρ measured on
        the batch the step was fitted to tends to exceed 3/4 every time on
        small minibatches, so λ would otherwise shrink geometrically.
    seed : int or None
        Seeds the MC targets (step k uses a seed derived from (seed, k)).
    mc_samples : int >= 1
        Sampled targets per datum for ``curvature="mc"``.
    kl_clip : float > 0 or None
    stats_batch : int or None
        Estimate the curvature statistics (step 1) from a random subset of
        this many rows of each batch (drawn reproducibly from (seed, k));
        None uses the whole batch. The gradient and the quadratic model
        always use the whole batch.

    Attributes
    ----------
    damping : float
        The current λ.
    gamma : float
        The current factored-damping strength γ.
    steps : int
    last : dict
        Diagnostics of the last step: ``loss``, ``h``, ``alpha``, ``mu``,
        ``rho`` (None unless λ was adapted at this step), ``damping``,
        ``gamma``, ``direction`` (Δ), ``update`` (δ), ``grad`` (∇h), and,
        when the model was evaluated, ``qmodel`` (M(δ) − M(0), damped),
        ``qmodel0`` (the same with ``F + ηI``, ρ's denominator) and
        ``quad_fisher`` (``δ^T F δ``).
    """

    def __init__(self, net, loss="ce", lr=None, momentum=None, damping=150.0, weight_decay=1e-5,
                 ema_decay=0.95, inverse_every=20, damping_every=5, structure="blockdiag",
                 curvature="mc", adapt_damping=True, seed=0, mc_samples=1, kl_clip=None,
                 gamma_every=20, stats_batch=None, min_damping=1e-8):
        super().__init__(net, loss, weight_decay)
        self.lr = _real(lr, "lr", lo=0.0, lo_open=True, allow_none=True)
        self.momentum = _real(momentum, "momentum", lo=0.0, allow_none=True)
        self.ema_decay = _real(ema_decay, "ema_decay", lo=0.0, hi=1.0, hi_open=True)
        self.inverse_every = _int(inverse_every, "inverse_every")
        self.damping_every = _int(damping_every, "damping_every")
        self.gamma_every = _int(gamma_every, "gamma_every")
        self.structure = _choice(structure, "structure", _STRUCTURES)
        self.curvature = _choice(curvature, "curvature", tuple(_CURVATURES))
        if self.curvature == "kfra" and self.structure == "tridiag":
            raise ValueError("structure: 'tridiag' needs cross-layer statistics, which KFRA does not "
                             "define; use structure='blockdiag' with curvature='kfra'")
        if not isinstance(adapt_damping, (bool, np.bool_)):
            raise TypeError(f"adapt_damping: expected a bool, got {type(adapt_damping).__name__}")
        self.adapt_damping = bool(adapt_damping)
        self.seed = resolve_seed(seed)
        self.mc_samples = _int(mc_samples, "mc_samples")
        self.kl_clip = _real(kl_clip, "kl_clip", lo=0.0, lo_open=True, allow_none=True)
        self.stats_batch = None if stats_batch is None else _int(stats_batch, "stats_batch")
        self.damping = _real(damping, "damping", lo=0.0)
        self.min_damping = _real(min_damping, "min_damping", lo=0.0)
        self.gamma = math.sqrt(self.damping + self.weight_decay)
        self._tridiag = self.structure == "tridiag" and self.net.n_layers > 1
        sizes = self.net.sizes
        self._shapes_A = [(i + 1, i + 1) for i in sizes[:-1]]
        self._shapes_G = [(o, o) for o in sizes[1:]]
        self._shapes_Ac = [(sizes[l] + 1, sizes[l + 1] + 1) for l in range(len(sizes) - 2)]
        self._shapes_Gc = [(sizes[l + 1], sizes[l + 2]) for l in range(len(sizes) - 2)]
        self.A = self.G = self.A_cross = self.G_cross = None
        self._inv = None       # (KA, sA, KG, sG, PA, PG) of kfac_inverse
        self._inv_gamma = None
        self._prev = None      # previous update δ₀
        self.last = {}

    # ---- statistics -----------------------------------------------------------
    def _statistics(self, X, y, N, k):
        dt = self.net.dtype
        if self.stats_batch is not None and self.stats_batch < N:
            # a random subset of the rows, drawn from (seed, k) like the MC targets
            rng = np.random.default_rng([self.seed, k, 1])
            idx = np.sort(rng.choice(N, self.stats_batch, replace=False))
            X, y, N = np.asarray(X)[idx], np.asarray(y)[idx], self.stats_batch
        A = [np.zeros(s, dtype=dt) for s in self._shapes_A]
        G = [np.zeros(s, dtype=dt) for s in self._shapes_G]
        Ac = [np.zeros(s, dtype=dt) for s in self._shapes_Ac] if self._tridiag else None
        Gc = [np.zeros(s, dtype=dt) for s in self._shapes_Gc] if self._tridiag else None
        _core.kfac_factors(self.net, _CURVATURES[self.curvature], X, y, self.loss, self.mc_samples,
                           _step_seed(self.seed, k), A, G, Ac, Gc)
        eps = min(1.0 - 1.0 / k, self.ema_decay)
        scale = 1.0 / N

        def ema(old, new):
            if old is None or eps == 0.0:
                return [n * dt.type(scale) for n in new]
            return [o * dt.type(eps) + n * dt.type((1.0 - eps) * scale) for o, n in zip(old, new)]

        self.A, self.G = ema(self.A, A), ema(self.G, G)
        if self._tridiag:
            self.A_cross, self.G_cross = ema(self.A_cross, Ac), ema(self.G_cross, Gc)

    def factored_pi(self):
        """Per-layer ``π_l = √((tr A_l / q_l) / (tr G_l / out_l))`` of the current
        statistics (1.0 where a trace is not positive)."""
        if self.A is None:
            raise RuntimeError("KFAC: no statistics yet; call step() first")
        pis = []
        for A, G in zip(self.A, self.G):
            ta = float(np.trace(A, dtype=np.float64)) / A.shape[0]
            tg = float(np.trace(G, dtype=np.float64)) / G.shape[0]
            pi = math.sqrt(ta / tg) if ta > 0 and tg > 0 else 1.0
            pis.append(pi if math.isfinite(pi) and pi > 0 else 1.0)
        return pis

    def _inverse(self, gamma):
        try:
            return _core.kfac_inverse(self.A, self.G, self.A_cross, self.G_cross, gamma,
                                      self.factored_pi())
        except _core.LinAlgError as e:
            raise _core.LinAlgError(
                f"KFAC: the damped curvature is singular at gamma = {gamma:g} (damping λ = "
                f"{self.damping:g}, weight_decay η = {self.weight_decay:g}); "
                + ("use damping > 0" if self.damping + self.weight_decay == 0 else
                   "the statistics may have blown up (a diverging fixed lr?): try a larger damping "
                   "or a smaller lr")
                + f". ({e})") from None

    def precondition(self, v):
        """``F̆⁻¹ v`` (theta order) with the current inverse (damped block-diagonal or
        block-tridiagonal K-FAC); v of shape (D,)."""
        if self._inv is None:
            raise RuntimeError("KFAC: no inverse yet; call step() first")
        arr = np.asarray(v)
        D = self.net.num_params
        if arr.dtype.kind not in "iuf":
            raise TypeError(f"v: expected a real array, got dtype {arr.dtype}")
        if arr.shape != (D,):
            raise ValueError(f"v: expected shape ({D},), got {arr.shape}")
        if not np.all(np.isfinite(arr)):
            raise ValueError("v: contains NaN or Inf")
        return _core.kfac_apply(*self._inv, arr)

    # ---- the quadratic model ------------------------------------------------
    def _gram(self, X, N, cols):
        """V^T F V for the exact GGN F of the mean loss on X and V = the given
        columns: the same numbers as ``V.T @ pk.ggn_matvec(net, X, y, loss, V) / N``
        from forward-mode products only (csrc: pk_ggn_gram)."""
        V = np.ascontiguousarray(np.stack(cols, axis=1))
        return _core.ggn_gram(self.net, X, self.loss, V) / N

    def _combine(self, delta, grad, X, y, N, need_model):
        """Step δ = α Δ + μ δ₀ with α, μ fixed or from the quadratic model.

        Returns (δ, info); info holds alpha, mu and, when the model was
        evaluated, qmodel (damped M(δ) − M(0)), qmodel0 (undamped, F + ηI),
        and quad_fisher (δ^T F δ)."""
        lr, mom = self.lr, self.momentum
        prev = self._prev
        use_prev = prev is not None and (mom is None or mom != 0.0)
        adaptive = lr is None or (mom is None and prev is not None)
        info = {}
        if lr is not None and self.kl_clip is not None:
            # K-FAC norm of the preconditioned-gradient term: lr^2 Δ^T F̆ Δ = lr^2 |Δ^T ∇h|
            vg = lr * lr * abs(float(np.dot(delta, grad)))
            if vg > self.kl_clip:
                lr *= math.sqrt(self.kl_clip / vg)
        if not (adaptive or need_model):
            mu = mom if (mom is not None and prev is not None) else 0.0
            step = delta * delta.dtype.type(lr)
            if mu:
                step += prev * prev.dtype.type(mu)
            info.update(alpha=lr, mu=mu)
            return step, info
        cols = [delta, prev] if use_prev else [delta]
        Fq = self._gram(X, N, cols)       # V^T F V
        c = self.damping + self.weight_decay
        n = len(cols)
        Iq = np.array([[float(np.dot(cols[i], cols[j])) for j in range(n)] for i in range(n)])
        Cq = Fq + c * Iq
        b = np.array([float(np.dot(grad, v)) for v in cols])
        coef = self._solve_coefficients(Cq, b, lr, mom if use_prev else 0.0, use_prev)
        if self.kl_clip is not None and self.lr is None:
            quad = float(coef @ Fq @ coef)
            if quad > self.kl_clip:
                coef = coef * math.sqrt(self.kl_clip / quad)
        alpha = float(coef[0])
        mu = float(coef[1]) if use_prev else 0.0
        step = delta * delta.dtype.type(alpha)
        if use_prev:
            step += prev * prev.dtype.type(mu)
        info.update(alpha=alpha, mu=mu,
                    qmodel=float(0.5 * coef @ Cq @ coef + b @ coef),
                    qmodel0=float(0.5 * coef @ (Fq + self.weight_decay * Iq) @ coef + b @ coef),
                    quad_fisher=float(coef @ Fq @ coef))
        return step, info

    @staticmethod
    def _solve_coefficients(Cq, b, lr, mom, use_prev):
        """Minimise ½ x^T Cq x + b^T x over the free entries of x = (α, μ)."""
        if not use_prev:
            if lr is not None:
                return np.array([lr])
            return np.array([-b[0] / Cq[0, 0] if Cq[0, 0] > 0 else 1.0])
        if lr is None and mom is None:
            det = Cq[0, 0] * Cq[1, 1] - Cq[0, 1] ** 2
            if Cq[0, 0] > 0 and Cq[1, 1] > 0 and det > 1e-12 * Cq[0, 0] * Cq[1, 1]:
                return np.linalg.solve(Cq, -b)
            # Δ and δ₀ (nearly) parallel: the model is one-dimensional
            return np.array([-b[0] / Cq[0, 0] if Cq[0, 0] > 0 else 1.0, 0.0])
        if lr is None:   # fixed μ
            a = -(b[0] + mom * Cq[0, 1]) / Cq[0, 0] if Cq[0, 0] > 0 else 1.0
            return np.array([a, mom])
        if mom is None:  # fixed α
            m = -(b[1] + lr * Cq[0, 1]) / Cq[1, 1] if Cq[1, 1] > 0 else 0.0
            return np.array([lr, m])
        return np.array([lr, mom])

    # ---- one step -------------------------------------------------------------
    def _direction(self, X, y, N, k, grad):
        """Statistics, inverse (and γ search), direction Δ and step δ of step k."""
        self._statistics(X, y, N, k)
        lm_step = self.adapt_damping and k % self.damping_every == 0
        gamma_step = self.adapt_damping and k % self.gamma_every == 0
        refresh = k <= 3 or k % self.inverse_every == 0 or self._inv is None
        if gamma_step:
            w2 = (19.0 / 20.0) ** (0.5 * self.gamma_every)
            floor = math.sqrt(self.weight_decay)
            cands = [self.gamma, max(self.gamma * w2, floor), self.gamma / w2]
            best = None
            for i, gam in enumerate(cands):
                if i and gam == cands[0]:
                    continue
                inv = self._inverse(gam)
                delta = -_core.kfac_apply(*inv, grad)
                step, info = self._combine(delta, grad, X, y, N, need_model=True)
                if best is None or info["qmodel"] < best[3]["qmodel"]:
                    best = (gam, inv, delta, info, step)
            self.gamma, self._inv, delta, info, step = best
            self._inv_gamma = self.gamma
        else:
            if refresh:
                self._inv = self._inverse(self.gamma)
                self._inv_gamma = self.gamma
            delta = -_core.kfac_apply(*self._inv, grad)
            step, info = self._combine(delta, grad, X, y, N, need_model=lm_step)
        return step, delta, info, lm_step

    def step(self, X, y):
        """One K-FAC update on the batch ``(X, y)``.

        Returns
        -------
        float
            The mean batch loss at the parameters before the update.
        """
        N = _batch_size(X)
        k = self.steps + 1
        value, h0, grad = self._objective_grad(X, y)[:3]
        if not (math.isfinite(h0) and np.isfinite(grad).all()):
            _check_finite(self, math.nan, self.net.theta)
        saved = (self.A, self.G, self.A_cross, self.G_cross, self._inv, self._inv_gamma, self.gamma)
        try:
            step, delta, info, lm_step = self._direction(X, y, N, k, grad)
            if not np.isfinite(step).all():
                _check_finite(self, math.nan, step)
        except BaseException:
            # leave the optimiser as it was: a failed step can be retried
            (self.A, self.G, self.A_cross, self.G_cross, self._inv, self._inv_gamma,
             self.gamma) = saved
            raise
        theta = self.net.theta
        theta += step
        rho = None
        if lm_step:
            h1 = self._h(X, y, N)
            pred = info["qmodel0"]
            rho = (h1 - h0) / pred if pred < 0 else -math.inf
            if not math.isfinite(rho):
                rho = -math.inf
            w1 = (19.0 / 20.0) ** self.damping_every
            if rho > 0.75:
                self.damping = max(self.damping * w1, min(self.min_damping, self.damping))
            elif rho < 0.25:
                self.damping /= w1
        self._prev = step
        self.steps = k
        self.last = dict(loss=value, h=h0, rho=rho, damping=self.damping, gamma=self.gamma,
                         direction=delta, update=step, grad=grad, **info)
        return value

    # ---- state ------------------------------------------------------------------
    def _hyper(self):
        # the current λ as the initial one: load_state_dict restores λ and γ anyway
        return {"lr": self.lr, "momentum": self.momentum, "damping": self.damping,
                "weight_decay": self.weight_decay, "ema_decay": self.ema_decay,
                "inverse_every": self.inverse_every, "damping_every": self.damping_every,
                "gamma_every": self.gamma_every, "structure": self.structure,
                "curvature": self.curvature, "adapt_damping": self.adapt_damping, "seed": self.seed,
                "mc_samples": self.mc_samples, "kl_clip": self.kl_clip, "stats_batch": self.stats_batch,
                "min_damping": self.min_damping}

    def state_dict(self):
        """A deep copy of everything a resumed run needs to continue bitwise
        identically: step count, λ, γ, the moving averages, the current inverse,
        the previous step and the RNG seed (MC targets of step k depend only on
        (seed, k))."""
        def copies(lst):
            return None if lst is None else [a.copy() for a in lst]

        inv = None
        if self._inv is not None:
            inv = [copies(part) if part is not None else None for part in self._inv]
        return {
            "type": "KFAC", "sizes": self.net.sizes, "dtype": self.net.dtype.name,
            "structure": self.structure, "curvature": self.curvature,
            "steps": self.steps, "damping": self.damping, "gamma": self.gamma,
            "seed": self.seed, "A": copies(self.A), "G": copies(self.G),
            "A_cross": copies(self.A_cross), "G_cross": copies(self.G_cross),
            "inverse": inv, "inverse_gamma": self._inv_gamma,
            "prev_update": None if self._prev is None else self._prev.copy(),
        }

    def load_state_dict(self, state):
        """Restore a state saved by :meth:`state_dict` (same network sizes, dtype,
        structure and curvature). Hyperparameters other than λ, γ and the seed
        stay as constructed."""
        self._check_state(state, "KFAC")
        for key in ("structure", "curvature"):
            if state.get(key) != getattr(self, key):
                raise ValueError(f"state: saved with {key}={state.get(key)!r}, this optimiser has "
                                 f"{key}={getattr(self, key)!r}")
        steps = _int(state["steps"], "state['steps']", lo=0)

        def arrays(key, shapes):
            lst = state.get(key)
            if lst is None:
                return None
            if len(lst) != len(shapes):
                raise ValueError(f"state[{key!r}]: expected {len(shapes)} arrays, got {len(lst)}")
            return [self._array({key: a}, key, s) for a, s in zip(lst, shapes)]

        A, G = arrays("A", self._shapes_A), arrays("G", self._shapes_G)
        Ac, Gc = arrays("A_cross", self._shapes_Ac), arrays("G_cross", self._shapes_Gc)
        if steps and (A is None or G is None or (self._tridiag and (Ac is None or Gc is None))):
            raise ValueError("state: statistics missing for a started run")
        inv = state.get("inverse")
        if inv is not None:
            if len(inv) != 6:
                raise ValueError("state['inverse']: expected 6 parts")
            sizes = self.net.sizes
            shapes = [self._shapes_A, [(s[0],) for s in self._shapes_A], self._shapes_G,
                      [(s[0],) for s in self._shapes_G], self._shapes_Ac, self._shapes_Gc]
            parts = []
            for name, part, shp in zip(("KA", "sA", "KG", "sG", "PA", "PG"), inv, shapes):
                if part is None:
                    parts.append(None)
                    continue
                if len(part) != len(shp):
                    raise ValueError(f"state['inverse'] {name}: expected {len(shp)} arrays")
                parts.append([self._array({name: a}, name, s) for a, s in zip(part, shp)])
            if (parts[4] is None) != (not self._tridiag) and len(sizes) > 2:
                raise ValueError("state['inverse']: structure does not match")
            inv = tuple(parts)
        prev = state.get("prev_update")
        self.A, self.G, self.A_cross, self.G_cross = A, G, Ac, Gc
        self._inv = inv
        self._inv_gamma = state.get("inverse_gamma")
        self._prev = None if prev is None else self._array(state, "prev_update", (self.net.num_params,))
        self.damping = _real(state["damping"], "state['damping']", lo=0.0)
        self.gamma = _real(state["gamma"], "state['gamma']", lo=0.0)
        self.seed = resolve_seed(state["seed"])
        self.steps = steps
        self.last = {}
