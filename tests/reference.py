"""A slow, obviously-correct NumPy reference for pykfac's dense-network maths.

Everything here is float64 and written for clarity, not speed: explicit loops
over samples, one backward pass per output column, closed-form derivatives of
every activation and loss. Nothing imports pykfac, so the tests compare two
independent implementations of /work/shared/CONVENTIONS.md.

Conventions (the same as the package's):

- layer l (0-based) maps sizes[l] -> sizes[l+1]: s_l = W_l a_l + b_l,
  a_{l+1} = phi_l(s_l) for hidden layers; the last layer is linear (f = s_{L-1});
- theta = [W_0.ravel() (row-major), b_0, W_1.ravel(), b_1, ...];
- the data term is the SUM over samples of the per-sample loss.

Two independent routes to second derivatives are provided:

- ``RefMLP.jacobian`` (reverse mode, one backward pass per output) and
  ``RefMLP.forward_second_order`` (forward mode carrying d a / d theta and
  d^2 a / d theta^2 through the network), which gives the exact Hessian of
  every output with respect to theta;
- finite differences (``fd_*`` and ``RefMLP.residual_fd``).
"""
import itertools
import math

import numpy as np

ACTIVATIONS = ("identity", "relu", "leaky_relu", "elu", "tanh", "sigmoid", "softplus", "gelu")
LOSSES = ("mse", "ce", "bce")
LEAKY_SLOPE = 0.01

_SQRT2 = math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_erf = np.vectorize(math.erf, otypes=[np.float64])


# --------------------------------------------------------------------------
# activations: value, first and second derivative in closed form
# --------------------------------------------------------------------------
def activation(name, x):
    """Return (phi(x), phi'(x), phi''(x)) elementwise, float64.

    relu'(0) = 0 and leaky_relu'(0) = slope (the derivative of the x <= 0
    branch), as in PyTorch; elu has alpha = 1; gelu is the exact erf form
    x * Phi(x); softplus is log(1 + e^x).
    """
    x = np.asarray(x, dtype=np.float64)
    zero = np.zeros_like(x)
    one = np.ones_like(x)
    if name == "identity":
        return x.copy(), one, zero
    if name == "relu":
        pos = x > 0
        return np.where(pos, x, 0.0), np.where(pos, 1.0, 0.0), zero
    if name == "leaky_relu":
        pos = x > 0
        return np.where(pos, x, LEAKY_SLOPE * x), np.where(pos, 1.0, LEAKY_SLOPE), zero
    if name == "elu":
        pos = x > 0
        em1 = np.expm1(np.minimum(x, 0.0))  # e^x - 1 on the negative branch
        return np.where(pos, x, em1), np.where(pos, 1.0, em1 + 1.0), np.where(pos, 0.0, em1 + 1.0)
    if name == "tanh":
        t = np.tanh(x)
        d1 = 1.0 - t * t
        return t, d1, -2.0 * t * d1
    if name == "sigmoid":
        s = sigmoid(x)
        d1 = s * (1.0 - s)
        return s, d1, d1 * (1.0 - 2.0 * s)
    if name == "softplus":
        s = sigmoid(x)
        return np.logaddexp(0.0, x), s, s * (1.0 - s)
    if name == "gelu":
        Phi = 0.5 * (1.0 + _erf(x / _SQRT2))
        pdf = _INV_SQRT_2PI * np.exp(-0.5 * x * x)
        # (x Phi)' = Phi + x pdf ; (x Phi)'' = 2 pdf + x pdf' = pdf (2 - x^2)
        return x * Phi, Phi + x * pdf, pdf * (2.0 - x * x)
    raise ValueError(f"unknown activation {name!r}")


def sigmoid(x):
    """Logistic function in a form that never overflows."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=np.float64)))


# --------------------------------------------------------------------------
# losses: per-sample value, gradient, Hessian Lambda and its square root S
# --------------------------------------------------------------------------
def bce_labels01(y):
    """bce labels as float 0/1 of shape (N,); -1 is read as 0 (+-1 accepted)."""
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    y = np.where(y == -1.0, 0.0, y)
    if not np.all((y == 0.0) | (y == 1.0)):
        raise ValueError("bce labels must be 0/1 or -1/+1")
    return y


def bce_targets(y, N, K):
    """bce labels as float 0/1 of shape (N, K) (one per output; (N,) accepted
    for K = 1); -1 is read as 0."""
    y = np.asarray(y, dtype=np.float64)
    if K == 1:
        y = y.reshape(N, 1)
    if y.shape != (N, K):
        raise ValueError(f"bce labels: expected shape ({N}, {K}), got {y.shape}")
    y = np.where(y == -1.0, 0.0, y)
    if not np.all((y == 0.0) | (y == 1.0)):
        raise ValueError("bce labels must be 0/1 or -1/+1")
    return y


def softmax(f):
    f = np.asarray(f, dtype=np.float64)
    z = f - f.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def loss_per_sample(f, y, loss):
    """(N,) per-sample losses for outputs f (N, K)."""
    f = np.asarray(f, dtype=np.float64)
    N, K = f.shape
    if loss == "mse":
        r = np.asarray(y, dtype=np.float64).reshape(N, K) - f
        return 0.5 * np.sum(r * r, axis=1)
    if loss == "ce":
        y = np.asarray(y).reshape(N)
        m = f.max(axis=1)
        lse = m + np.log(np.sum(np.exp(f - m[:, None]), axis=1))
        return lse - f[np.arange(N), y]
    if loss == "bce":  # K independent logistic losses, summed
        yt = 2.0 * bce_targets(y, N, K) - 1.0
        return np.sum(np.logaddexp(0.0, -yt * f), axis=1)
    raise ValueError(loss)


def loss_grad_output(f, y, loss):
    """(N, K) dl/df."""
    f = np.asarray(f, dtype=np.float64)
    N, K = f.shape
    if loss == "mse":
        return f - np.asarray(y, dtype=np.float64).reshape(N, K)
    if loss == "ce":
        y = np.asarray(y).reshape(N)
        g = softmax(f)
        g[np.arange(N), y] -= 1.0
        return g
    if loss == "bce":
        yt = 2.0 * bce_targets(y, N, K) - 1.0
        # d/df log(1 + exp(-yt f)) = -yt sigma(-yt f), per output
        return -yt * sigmoid(-yt * f)
    raise ValueError(loss)


def loss_hessian_output(f, loss):
    """(N, K, K) Lambda_n = d^2 l / df^2 (independent of the labels for all three losses)."""
    f = np.asarray(f, dtype=np.float64)
    N, K = f.shape
    if loss == "mse":
        return np.repeat(np.eye(K)[None], N, axis=0)
    if loss == "ce":
        p = softmax(f)
        return np.stack([np.diag(p[n]) - np.outer(p[n], p[n]) for n in range(N)])
    if loss == "bce":  # independent outputs: diagonal
        s = sigmoid(f)
        return np.stack([np.diag(s[n] * (1.0 - s[n])) for n in range(N)])
    raise ValueError(loss)


def loss_hessian_sqrt(f, loss):
    """(N, K, K) S_n with S_n S_n^T = Lambda_n; for ce column v is sqrt(p_v)(e_v - p)."""
    f = np.asarray(f, dtype=np.float64)
    N, K = f.shape
    if loss == "mse":
        return np.repeat(np.eye(K)[None], N, axis=0)
    if loss == "ce":
        p = softmax(f)
        S = np.empty((N, K, K))
        for n in range(N):
            for v in range(K):
                e = np.zeros(K)
                e[v] = 1.0
                S[n, :, v] = math.sqrt(p[n, v]) * (e - p[n])
        return S
    if loss == "bce":
        s = sigmoid(f)
        return np.stack([np.diag(np.sqrt(s[n] * (1.0 - s[n]))) for n in range(N)])
    raise ValueError(loss)


def output_grad_distribution(f_n, loss):
    """The distribution of dl/df when the target is drawn from the model's
    predictive at one output f_n (K,), for the discrete losses: returns
    (probs (V,), grads (V, K)). E[g g^T] = Lambda_n. (mse: Gaussian, not
    enumerable; see the closed forms in mc_*_stats.)"""
    f_n = np.asarray(f_n, dtype=np.float64).reshape(-1)
    K = f_n.size
    if loss == "ce":
        p = softmax(f_n[None])[0]
        return p, p[None, :] - np.eye(K)  # row v: p - e_v
    if loss == "bce":
        # all 2^K label vectors t (independent Bernoulli(s_k)); K = 1: y = 1, y = 0
        s = sigmoid(f_n)
        ts = np.array(list(itertools.product([1.0, 0.0], repeat=K)))
        probs = np.prod(np.where(ts == 1.0, s, 1.0 - s), axis=1)
        return probs, s[None, :] - ts
    raise ValueError(loss)


# --------------------------------------------------------------------------
# the network
# --------------------------------------------------------------------------
class RefMLP:
    """A dense network held as float64 copies of [(W_l, b_l)] plus activation names."""

    def __init__(self, params, activations):
        self.params = [
            (np.array(W, dtype=np.float64, copy=True), np.array(b, dtype=np.float64, copy=True).reshape(-1))
            for W, b in params
        ]
        L = len(self.params)
        if L < 1:
            raise ValueError("need at least one layer")
        if isinstance(activations, str):
            activations = [activations] * (L - 1)
        self.activations = list(activations)
        if len(self.activations) != L - 1:
            raise ValueError("need one activation per hidden layer")
        self.sizes = [self.params[0][0].shape[1]] + [W.shape[0] for W, _ in self.params]
        for l, (W, b) in enumerate(self.params):
            if W.shape != (self.sizes[l + 1], self.sizes[l]) or b.shape != (self.sizes[l + 1],):
                raise ValueError(f"layer {l}: inconsistent shapes")
        self.offsets = []
        off = 0
        for W, b in self.params:
            self.offsets.append(off)
            off += W.size + b.size
        self.num_params = off

    @property
    def n_layers(self):
        return len(self.params)

    # ---- theta layout ---------------------------------------------------
    def theta(self):
        return np.concatenate([np.concatenate([W.ravel(), b]) for W, b in self.params])

    def with_theta(self, theta):
        theta = np.asarray(theta, dtype=np.float64)
        assert theta.shape == (self.num_params,)
        params = []
        for l, (W, b) in enumerate(self.params):
            o = self.offsets[l]
            Wn = theta[o:o + W.size].reshape(W.shape)
            bn = theta[o + W.size:o + W.size + b.size]
            params.append((Wn, bn))
        return RefMLP(params, self.activations)

    def layer_slice(self, l):
        """The slice of theta holding layer l (W_l.ravel() then b_l)."""
        W, b = self.params[l]
        return slice(self.offsets[l], self.offsets[l] + W.size + b.size)

    def w_index(self, l, i, j):
        return self.offsets[l] + i * self.sizes[l] + j

    def b_index(self, l, i):
        return self.offsets[l] + self.sizes[l + 1] * self.sizes[l] + i

    # ---- forward --------------------------------------------------------
    def forward_cache(self, X):
        """f (N, K), inputs [a_0 .. a_{L-1}] of every layer, pre-activations [s_0 .. s_{L-1}]."""
        a = np.asarray(X, dtype=np.float64)
        a_list, s_list = [], []
        for l, (W, b) in enumerate(self.params):
            a_list.append(a)
            s = a @ W.T + b
            s_list.append(s)
            if l < self.n_layers - 1:
                a = activation(self.activations[l], s)[0]
        return s_list[-1], a_list, s_list

    def forward(self, X):
        return self.forward_cache(X)[0]

    def __call__(self, X):
        return self.forward(X)

    # ---- losses ---------------------------------------------------------
    def loss(self, X, y, loss):
        return float(np.sum(loss_per_sample(self.forward(X), y, loss)))

    # ---- reverse mode, one sample at a time -------------------------------
    def _sample_cache(self, x):
        _, a_list, s_list = self.forward_cache(np.asarray(x, dtype=np.float64).reshape(1, -1))
        return [a[0] for a in a_list], [s[0] for s in s_list]

    def backprop(self, a_list, s_list, u):
        """One backward pass for one sample with output gradient u (K,).

        Returns (deltas, grad): deltas[l] = d(u^T f)/d s_l (pre-activation
        gradient of layer l) and grad = d(u^T f)/d theta (D,)."""
        L = self.n_layers
        deltas = [None] * L
        d = np.asarray(u, dtype=np.float64).reshape(-1).copy()
        for l in range(L - 1, -1, -1):
            deltas[l] = d
            if l > 0:
                W = self.params[l][0]
                d = (W.T @ d) * activation(self.activations[l - 1], s_list[l - 1])[1]
        grad = np.empty(self.num_params)
        for l in range(L):
            sl = self.layer_slice(l)
            grad[sl] = np.concatenate([np.outer(deltas[l], a_list[l]).ravel(), deltas[l]])
        return deltas, grad

    def jacobian(self, X):
        """(N, K, D) by K backward passes per sample."""
        X = np.asarray(X, dtype=np.float64)
        K = self.sizes[-1]
        J = np.empty((X.shape[0], K, self.num_params))
        for n in range(X.shape[0]):
            a_list, s_list = self._sample_cache(X[n])
            for k in range(K):
                J[n, k] = self.backprop(a_list, s_list, np.eye(K)[k])[1]
        return J

    def vjp(self, X, U):
        """sum_n J_n^T U_n for U (N, K), by one backward pass per sample."""
        X = np.asarray(X, dtype=np.float64)
        U = np.asarray(U, dtype=np.float64)
        out = np.zeros(self.num_params)
        for n in range(X.shape[0]):
            a_list, s_list = self._sample_cache(X[n])
            out += self.backprop(a_list, s_list, U[n])[1]
        return out

    def loss_grad(self, X, y, loss):
        f = self.forward(X)
        return float(np.sum(loss_per_sample(f, y, loss))), self.vjp(X, loss_grad_output(f, y, loss))

    def per_sample_grads(self, X, y, loss):
        """(N, D) gradients of the per-sample losses."""
        X = np.asarray(X, dtype=np.float64)
        r = loss_grad_output(self.forward(X), y, loss)
        out = np.empty((X.shape[0], self.num_params))
        for n in range(X.shape[0]):
            a_list, s_list = self._sample_cache(X[n])
            out[n] = self.backprop(a_list, s_list, r[n])[1]
        return out

    # ---- forward mode, first and second order -------------------------------
    def forward_second_order(self, x):
        """Exact derivatives of the outputs for one sample x by forward mode:
        returns f (K,), df/dtheta (K, D) and d^2 f / dtheta^2 (K, D, D).

        Carries a, da = d a / d theta and d2a = d^2 a / d theta^2 through
        s_i = sum_j W_ij a_j + b_i, where W_ij and b_i are coordinates of theta:
          ds_i/dp     = [p = W_ij] a_j + sum_j W_ij da_j/dp + [p = b_i]
          d2s_i/dp dq = [p = W_ij] da_j/dq + [q = W_ij] da_j/dp + sum_j W_ij d2a_j/dp dq
        and a = phi(s):  da = phi'(s) ds,  d2a = phi''(s) ds ds^T + phi'(s) d2s."""
        D = self.num_params
        a = np.asarray(x, dtype=np.float64).reshape(-1)
        da = np.zeros((a.size, D))
        d2a = np.zeros((a.size, D, D))
        for l, (W, b) in enumerate(self.params):
            n_out, n_in = W.shape
            s = W @ a + b
            ds = W @ da
            d2s = np.einsum("ij,jpq->ipq", W, d2a)
            for i in range(n_out):
                for j in range(n_in):
                    p = self.w_index(l, i, j)
                    ds[i, p] += a[j]
                    d2s[i, p, :] += da[j, :]
                    d2s[i, :, p] += da[j, :]
                ds[i, self.b_index(l, i)] += 1.0
            if l == self.n_layers - 1:
                return s, ds, d2s
            phi, d1, d2 = activation(self.activations[l], s)
            a = phi
            da = d1[:, None] * ds
            d2a = d2[:, None, None] * ds[:, :, None] * ds[:, None, :] + d1[:, None, None] * d2s
        raise AssertionError("unreachable")

    def jacobian_forward(self, X):
        """(N, K, D) by forward mode (an independent route to ``jacobian``)."""
        X = np.asarray(X, dtype=np.float64)
        return np.stack([self.forward_second_order(x)[1] for x in X])

    # ---- dense curvature ------------------------------------------------
    def ggn(self, X, y, loss):
        """sum_n J_n^T Lambda_n J_n with J from reverse mode."""
        J = self.jacobian(X)
        lam = loss_hessian_output(self.forward(X), loss)
        return np.einsum("nkp,nkl,nlq->pq", J, lam, J)

    def residual(self, X, y, loss):
        """sum_n sum_k (dl/df_k) d^2 f_k / dtheta^2, exact (forward mode)."""
        X = np.asarray(X, dtype=np.float64)
        r = loss_grad_output(self.forward(X), y, loss)
        R = np.zeros((self.num_params, self.num_params))
        for n in range(X.shape[0]):
            R += np.einsum("k,kpq->pq", r[n], self.forward_second_order(X[n])[2])
        return R

    def hessian(self, X, y, loss):
        """Exact Hessian sum_n [J_n^T Lambda_n J_n + sum_k r_nk d^2 f_nk], all by forward mode."""
        X = np.asarray(X, dtype=np.float64)
        f = self.forward(X)
        r = loss_grad_output(f, y, loss)
        lam = loss_hessian_output(f, loss)
        H = np.zeros((self.num_params, self.num_params))
        for n in range(X.shape[0]):
            _, J, H2 = self.forward_second_order(X[n])
            H += J.T @ lam[n] @ J + np.einsum("k,kpq->pq", r[n], H2)
        return H

    def residual_fd(self, X, y, loss, h=1e-5):
        """The residual term by central differences of theta -> J(theta)^T r,
        with r = dl/df held fixed at the current theta."""
        r = loss_grad_output(self.forward(X), y, loss)
        theta = self.theta()
        return fd_jacobian(lambda t: self.with_theta(t).vjp(X, r), theta, h)

    def hessian_fd(self, X, y, loss, h=1e-5):
        """Central differences of the analytic gradient."""
        theta = self.theta()
        H = fd_jacobian(lambda t: self.with_theta(t).loss_grad(X, y, loss)[1], theta, h)
        return H

    def hessian_fd_loss(self, X, y, loss, h=1e-4):
        """Second differences of the loss VALUE only (no derivatives at all)."""
        theta = self.theta()
        fun = lambda t: self.with_theta(t).loss(X, y, loss)  # noqa: E731
        return fd_hessian(fun, theta, h)

    # ---- K-FAC ----------------------------------------------------------
    def kfac_A(self, X):
        """A_l = (1/N) sum_n abar abar^T with abar = [a_l; 1]."""
        X = np.asarray(X, dtype=np.float64)
        N = X.shape[0]
        _, a_list, _ = self.forward_cache(X)
        out = []
        for a in a_list:
            abar = np.hstack([a, np.ones((N, 1))])
            A = np.zeros((abar.shape[1], abar.shape[1]))
            for n in range(N):
                A += np.outer(abar[n], abar[n])
            out.append(A / N)
        return out

    def kfac_G(self, X, y, loss, kind):
        """G_l = sum of g g^T over the pre-activation gradients g of layer l.

        exact:     g_{n,c} from output gradient S_n[:, c] (all K columns);
        empirical: g_n from the true-label gradient dl/df;
        kfra:      Botev et al.: cG_{L-1} = mean_n Lambda_n,
                   cG_l = (W_{l+1}^T cG_{l+1} W_{l+1}) o mean_n(phi'(s_l) phi'(s_l)^T),
                   G_l = N cG_l."""
        X = np.asarray(X, dtype=np.float64)
        N = X.shape[0]
        L = self.n_layers
        f, _, s_list = self.forward_cache(X)
        G = [np.zeros((self.sizes[l + 1], self.sizes[l + 1])) for l in range(L)]
        if kind == "kfra":
            lam = loss_hessian_output(f, loss)
            cG = lam.mean(axis=0)
            G[L - 1] = N * cG
            for l in range(L - 2, -1, -1):
                W_next = self.params[l + 1][0]
                d1 = activation(self.activations[l], s_list[l])[1]  # (N, out_l)
                M = np.zeros((d1.shape[1], d1.shape[1]))
                for n in range(N):
                    M += np.outer(d1[n], d1[n])
                M /= N
                cG = (W_next.T @ cG @ W_next) * M
                G[l] = N * cG
            return G
        if kind == "exact":
            S = loss_hessian_sqrt(f, loss)
            columns = [[S[n][:, c] for c in range(S.shape[2])] for n in range(N)]
        elif kind == "empirical":
            r = loss_grad_output(f, y, loss)
            columns = [[r[n]] for n in range(N)]
        else:
            raise ValueError(kind)
        for n in range(N):
            a_list, s_n = self._sample_cache(X[n])
            for u in columns[n]:
                deltas, _ = self.backprop(a_list, s_n, u)
                for l in range(L):
                    G[l] += np.outer(deltas[l], deltas[l])
        return G

    def output_to_preact(self, x, l):
        """B (sizes[l+1] x K): the linear map from an output gradient u to the
        pre-activation gradient of layer l, for one sample (column k = backprop of e_k)."""
        a_list, s_list = self._sample_cache(x)
        K = self.sizes[-1]
        return np.stack([self.backprop(a_list, s_list, np.eye(K)[k])[0][l] for k in range(K)], axis=1)

    def ggn_block(self, X, y, loss, l):
        """Exact GGN block of layer l, theta order (W_l.ravel() then b_l)."""
        sl = self.layer_slice(l)
        return self.ggn(X, y, loss)[sl, sl]

    # ---- Monte-Carlo statistics (exact mean and variance of one draw) -------
    def mc_diag_stats(self, X, loss):
        """For the MC diagonal GGN with one sampled target per datum: returns
        (mean (D,), var (D,)) where mean = diag(GGN) and var = sum_n Var[(J_n^T g)^2]
        per coordinate. An M-sample average per datum has E||est - mean||^2 = sum(var) / M.
        mse (g ~ N(0, I)): (a^T g)^2 has mean |a|^2 and variance 2 |a|^4."""
        X = np.asarray(X, dtype=np.float64)
        f = self.forward(X)
        J = self.jacobian(X)
        mean = np.zeros(self.num_params)
        var = np.zeros(self.num_params)
        for n in range(X.shape[0]):
            if loss == "mse":
                m = np.sum(J[n] ** 2, axis=0)
                mean += m
                var += 2.0 * m * m
                continue
            probs, grads = output_grad_distribution(f[n], loss)
            vals = (grads @ J[n]) ** 2  # (V, D)
            m = probs @ vals
            mean += m
            var += probs @ (vals * vals) - m * m
        return mean, var

    def mc_kfac_G_stats(self, X, loss):
        """For MC K-FAC with one sampled target per datum: per layer (mean G_l,
        var (out_l, out_l)) with var[i, j] = sum_n Var[(g g^T)_ij]. mse (g = B eps,
        eps ~ N(0, I)): with C = B B^T, Var[g_i g_j] = C_ii C_jj + C_ij^2."""
        X = np.asarray(X, dtype=np.float64)
        f = self.forward(X)
        out = []
        for l in range(self.n_layers):
            mean = np.zeros((self.sizes[l + 1], self.sizes[l + 1]))
            var = np.zeros_like(mean)
            for n in range(X.shape[0]):
                B = self.output_to_preact(X[n], l)
                if loss == "mse":
                    C = B @ B.T
                    mean += C
                    var += np.outer(np.diag(C), np.diag(C)) + C * C
                    continue
                probs, grads = output_grad_distribution(f[n], loss)
                outer = [np.outer(B @ g, B @ g) for g in grads]
                m = sum(p * o for p, o in zip(probs, outer))
                mean += m
                var += sum(p * o * o for p, o in zip(probs, outer)) - m * m
            out.append((mean, var))
        return out


def mc_check(estimates, mean, var, M):
    """Statistics of S independent M-sample Monte-Carlo estimates (S, *shape)
    of `mean`, whose single-draw variance per entry is `var` (an M-sample
    average has variance var / M). Returns (max |z|, ratio) with
    z = (estimate - mean) / sqrt(var / M) over entries with var > 0, and
    ratio = mean of z^2 (1 in expectation). Entries with var == 0 must be exact:
    their largest error is folded into max |z| as +inf if it exceeds 1e-12 scale."""
    estimates = np.asarray(estimates, dtype=np.float64)
    mean = np.asarray(mean, dtype=np.float64)
    var = np.asarray(var, dtype=np.float64)
    live = var > 1e-24 * max(float(var.max()), 1e-300)
    err = estimates - mean[None]
    z = err[:, live] / np.sqrt(var[live] / M)[None]
    zmax = float(np.max(np.abs(z)))
    if np.any(~live) and np.max(np.abs(err[:, ~live])) > 1e-12 * np.abs(mean).max():
        zmax = float("inf")
    return zmax, float(np.mean(z * z))


# --------------------------------------------------------------------------
# Kronecker blocks and orderings
# --------------------------------------------------------------------------
def wbar_to_theta_perm(n_out, n_in):
    """perm (n_out (n_in+1),) with theta_block[t, t'] = wbar_block[perm[t], perm[t']].

    A layer's slice of theta is [W.ravel(), b]: W[i, j] at t = i n_in + j and
    b[i] at t = n_out n_in + i. In row-major vec(Wbar), Wbar = [W b], entry
    (i, j) sits at i (n_in + 1) + j, and b[i] = Wbar[i, n_in]."""
    perm = np.empty(n_out * (n_in + 1), dtype=np.intp)
    for i in range(n_out):
        for j in range(n_in):
            perm[i * n_in + j] = i * (n_in + 1) + j
        perm[n_out * n_in + i] = i * (n_in + 1) + n_in
    return perm


def theta_to_wbar(block_theta, n_out, n_in):
    """Reorder a (theta-ordered) layer block to row-major Wbar order."""
    perm = wbar_to_theta_perm(n_out, n_in)
    inv = np.empty_like(perm)
    inv[perm] = np.arange(perm.size)
    return block_theta[np.ix_(inv, inv)]


def wbar_to_theta(block_wbar, n_out, n_in):
    perm = wbar_to_theta_perm(n_out, n_in)
    return block_wbar[np.ix_(perm, perm)]


def kron_dense(G, A):
    """G (x) A written out entry by entry: [i m + j, k m + l] = G[i, k] A[j, l]."""
    p, m = G.shape[0], A.shape[0]
    out = np.empty((p * m, p * m))
    for i in range(p):
        for k in range(p):
            out[i * m:(i + 1) * m, k * m:(k + 1) * m] = G[i, k] * A
    return out


def kron_block_theta(G, A):
    """The layer block G (x) A (Wbar row-major order) reordered to theta order."""
    n_out, n_in = G.shape[0], A.shape[0] - 1
    return wbar_to_theta(kron_dense(G, A), n_out, n_in)


def block_diag(blocks):
    n = sum(b.shape[0] for b in blocks)
    out = np.zeros((n, n))
    o = 0
    for b in blocks:
        out[o:o + b.shape[0], o:o + b.shape[0]] = b
        o += b.shape[0]
    return out


def kfac_dense(As, Gs):
    """Block-diagonal (D, D) K-FAC matrix in theta order."""
    return block_diag([kron_block_theta(G, A) for G, A in zip(Gs, As)])


def block_diagonal_part(M, ref):
    """M with everything outside the layer blocks of ``ref`` (a RefMLP) zeroed."""
    return block_diag([M[ref.layer_slice(l), ref.layer_slice(l)] for l in range(ref.n_layers)])


# --------------------------------------------------------------------------
# finite differences
# --------------------------------------------------------------------------
def fd_gradient(fun, theta, h=1e-6):
    """Central differences of a scalar function."""
    theta = np.asarray(theta, dtype=np.float64)
    g = np.empty(theta.size)
    for p in range(theta.size):
        e = np.zeros(theta.size)
        e[p] = h
        g[p] = (fun(theta + e) - fun(theta - e)) / (2.0 * h)
    return g


def fd_jacobian(fun, theta, h=1e-6):
    """Central differences of an array-valued function: (*out_shape, D)."""
    theta = np.asarray(theta, dtype=np.float64)
    cols = []
    for p in range(theta.size):
        e = np.zeros(theta.size)
        e[p] = h
        cols.append((np.asarray(fun(theta + e)) - np.asarray(fun(theta - e))) / (2.0 * h))
    return np.stack(cols, axis=-1)


def fd_hessian(fun, theta, h=1e-4):
    """Second-order central differences of a scalar function (values only)."""
    theta = np.asarray(theta, dtype=np.float64)
    D = theta.size
    f0 = fun(theta)
    H = np.empty((D, D))
    E = np.eye(D) * h
    for p in range(D):
        H[p, p] = (fun(theta + E[p]) - 2.0 * f0 + fun(theta - E[p])) / (h * h)
        for q in range(p):
            v = (fun(theta + E[p] + E[q]) - fun(theta + E[p] - E[q])
                 - fun(theta - E[p] + E[q]) + fun(theta - E[p] - E[q])) / (4.0 * h * h)
            H[p, q] = H[q, p] = v
    return H


# --------------------------------------------------------------------------
# comparison helper for the tests
# --------------------------------------------------------------------------
def max_rel_err(actual, desired):
    """max |actual - desired| / max |desired| (scale-relative, shape-checked)."""
    actual = np.asarray(actual, dtype=np.float64)
    desired = np.asarray(desired, dtype=np.float64)
    assert actual.shape == desired.shape, f"shape {actual.shape} != {desired.shape}"
    scale = max(float(np.max(np.abs(desired), initial=0.0)), 1e-300)
    return float(np.max(np.abs(actual - desired), initial=0.0)) / scale


def assert_close(actual, desired, tol, what=""):
    """Assert max |actual - desired| <= tol * max |desired|."""
    err = max_rel_err(actual, desired)
    if not err <= tol:
        a = np.asarray(actual, dtype=np.float64)
        d = np.asarray(desired, dtype=np.float64)
        idx = np.unravel_index(np.argmax(np.abs(a - d)), d.shape) if d.size else ()
        raise AssertionError(
            f"{what}: scale-relative error {err:.3e} > {tol:.1e} "
            f"(worst at {tuple(int(i) for i in idx)}: {a[idx]!r} vs {d[idx]!r})")


# ---------------------------------------------------------------- Laplace priors
def layer_offsets(model):
    """[0, end of layer 0, ...] in theta order for any object with .layers[i].num_params."""
    o = [0]
    for layer in model.layers:
        o.append(o[-1] + layer.num_params)
    return o


def prior_diag(prior, model):
    """(D,) diagonal of a scalar, per-layer or per-parameter prior precision."""
    off = layer_offsets(model)
    p = np.asarray(prior, dtype=np.float64).reshape(-1)
    if p.size == 1:
        return np.full(off[-1], p[0])
    if p.size == len(off) - 1:
        return np.repeat(p, np.diff(off))
    return p
