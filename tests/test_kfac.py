"""pk.kfac: Kronecker factors of every kind against tests/reference.py, and the
exactness identities of CONVENTIONS.md ("K-FAC for a dense layer"):

- A[l] = (1/N) sum_n abar abar^T, G[l] = sum g g^T, to_dense() = blockdiag(G (x) A)
  in theta order (reference.kron_block_theta writes the Wbar -> theta permutation);
- batch size 1: KFLR ("exact") and KFRA equal the exact GGN block of every layer;
- deep linear network + mse: KFLR equals the block-diagonal GGN for any N;
- N copies of one datum: N x the one-datum block;
- batches add up; MC converges to KFLR.
"""
import numpy as np
import pytest

import pykfac as pk
import reference as ref

KINDS = ["exact", "empirical", "kfra"]


def check_factors(kf, A_ref, G_ref, what, tol=1e-12):
    assert len(kf.A) == len(A_ref) and len(kf.G) == len(G_ref)
    for l, (A, G, Ar, Gr) in enumerate(zip(kf.A, kf.G, A_ref, G_ref)):
        ref.assert_close(A, Ar, tol, f"{what}: A[{l}]")
        ref.assert_close(G, Gr, tol, f"{what}: G[{l}]")


@pytest.mark.parametrize("loss", ref.LOSSES)
@pytest.mark.parametrize("act", ["tanh", "relu", "softplus"])
@pytest.mark.parametrize("kind", KINDS)
def test_factors_vs_reference(make_problem, kind, act, loss):
    net, X, y, rnet = make_problem(loss, hidden=(5, 4), activation=act, N=7)
    kf = pk.kfac(net, (X, y), loss, kind=kind)
    sizes = list(net.sizes)
    for l in range(len(sizes) - 1):
        assert kf.A[l].shape == (sizes[l] + 1, sizes[l] + 1)
        assert kf.G[l].shape == (sizes[l + 1], sizes[l + 1])
    A_ref, G_ref = rnet.kfac_A(X), rnet.kfac_G(X, y, loss, kind)
    check_factors(kf, A_ref, G_ref, kind)
    dense = kf.to_dense()
    assert dense.shape == (net.num_params, net.num_params)
    ref.assert_close(dense, ref.kfac_dense(A_ref, G_ref), 1e-12, f"{kind}: to_dense")


def test_to_dense_layout_uses_theta_order(make_problem):
    """to_dense() of the package's own factors is blockdiag(P (G (x) A) P^T)
    with P the explicit Wbar -> theta permutation, and zero off the blocks."""
    net, X, y, rnet = make_problem("ce", hidden=(4, 3), activation="tanh", N=5)
    kf = pk.kfac(net, (X, y), "ce", kind="exact")
    dense = kf.to_dense()
    blocks = [ref.kron_block_theta(np.asarray(G), np.asarray(A)) for A, G in zip(kf.A, kf.G)]
    ref.assert_close(dense, ref.block_diag(blocks), 1e-14, "to_dense layout")
    # the permutation is not the identity: Wbar order would put b[0] right after W[0, :]
    wbar_order = ref.block_diag([ref.kron_dense(np.asarray(G), np.asarray(A)) for A, G in zip(kf.A, kf.G)])
    assert ref.max_rel_err(dense, wbar_order) > 1e-2


def test_wbar_theta_permutation_round_trip():
    n_out, n_in = 3, 4
    M = np.arange((n_out * (n_in + 1)) ** 2, dtype=float).reshape(15, 15)
    np.testing.assert_array_equal(ref.theta_to_wbar(ref.wbar_to_theta(M, n_out, n_in), n_out, n_in), M)
    perm = ref.wbar_to_theta_perm(n_out, n_in)
    # theta slot of W[1, 2] is 1*4+2 = 6 -> Wbar slot 1*5+2 = 7; b[2] (theta 14) -> Wbar[2, 4] = 14
    assert perm[6] == 7 and perm[14] == 14 and perm[12] == 4


@pytest.mark.parametrize("loss", ref.LOSSES)
@pytest.mark.parametrize("act", ["tanh", "gelu", "leaky_relu"])
@pytest.mark.parametrize("kind", ["exact", "kfra"])
def test_batch_size_one_equals_ggn_blocks(make_problem, kind, act, loss):
    net, X, y, rnet = make_problem(loss, hidden=(4, 5), activation=act, N=1)
    dense = pk.kfac(net, (X, y), loss, kind=kind).to_dense()
    G = pk.ggn(net, X, y, loss)
    ref.assert_close(dense, ref.block_diagonal_part(G, rnet), 1e-12, f"{kind} N=1 vs ggn blocks")
    ref.assert_close(dense, ref.block_diagonal_part(rnet.ggn(X, y, loss), rnet), 1e-12,
                     f"{kind} N=1 vs reference ggn blocks")


@pytest.mark.parametrize("hidden", [(4,), (5, 3), (3, 4, 5)], ids=lambda h: "x".join(map(str, h)))
@pytest.mark.parametrize("N", [2, 9])
def test_deep_linear_mse_exact_equals_block_ggn(make_problem, hidden, N):
    net, X, y, rnet = make_problem("mse", hidden=hidden, activation="identity", N=N)
    dense = pk.kfac(net, (X, y), "mse", kind="exact").to_dense()
    G = rnet.ggn(X, y, "mse")
    ref.assert_close(dense, ref.block_diagonal_part(G, rnet), 1e-12, "deep linear K-FAC vs GGN blocks")


def test_nonlinear_net_is_not_exact(make_problem):
    """Control for the identities above: with a tanh net and N > 1 the K-FAC
    blocks differ from the GGN blocks, so those tests can fail."""
    net, X, y, rnet = make_problem("mse", hidden=(4, 3), activation="tanh", N=6)
    dense = pk.kfac(net, (X, y), "mse", kind="exact").to_dense()
    assert ref.max_rel_err(dense, ref.block_diagonal_part(rnet.ggn(X, y, "mse"), rnet)) > 1e-3


@pytest.mark.parametrize("loss", ref.LOSSES)
@pytest.mark.parametrize("kind", KINDS)
def test_copies_of_one_datum(make_problem, kind, loss):
    N = 5
    net, X, y, rnet = make_problem(loss, hidden=(4, 4), activation="sigmoid", N=1)
    Xn = np.repeat(X, N, axis=0)
    yn = np.repeat(y, N, axis=0)
    one = pk.kfac(net, (X, y), loss, kind=kind)
    many = pk.kfac(net, (Xn, yn), loss, kind=kind)
    for l in range(len(one.A)):
        ref.assert_close(many.A[l], one.A[l], 1e-13, f"A[{l}] unchanged by copies")
        ref.assert_close(many.G[l], N * np.asarray(one.G[l]), 1e-13, f"G[{l}] scales with N")
    ref.assert_close(many.to_dense(), N * one.to_dense(), 1e-13, "N copies")
    if kind != "empirical":
        blocks = ref.block_diagonal_part(rnet.ggn(Xn, yn, loss), rnet)
        ref.assert_close(many.to_dense(), blocks, 1e-12, "N copies vs GGN blocks")


def _batches(X, y, cuts):
    edges = [0, *cuts, len(X)]
    return [(X[a:b], y[a:b]) for a, b in zip(edges[:-1], edges[1:])]


@pytest.mark.parametrize("loss", ref.LOSSES)
@pytest.mark.parametrize("kind", ["exact", "empirical"])
def test_batches_equal_one_batch(make_problem, kind, loss):
    net, X, y, rnet = make_problem(loss, hidden=(5, 3), activation="elu", N=10)
    whole = pk.kfac(net, (X, y), loss, kind=kind)
    as_list = pk.kfac(net, _batches(X, y, [1, 4, 8]), loss, kind=kind)  # uneven: 1, 3, 4, 2
    as_gen = pk.kfac(net, (b for b in _batches(X, y, [6])), loss, kind=kind)
    for other, name in [(as_list, "list"), (as_gen, "generator")]:
        check_factors(other, whole.A, whole.G, f"{kind} batches ({name})", tol=1e-13)
    check_factors(whole, rnet.kfac_A(X), rnet.kfac_G(X, y, loss, kind), f"{kind} whole vs reference")


@pytest.mark.parametrize("loss", ref.LOSSES)
def test_kfra_last_layer_equals_exact(make_problem, loss):
    """G_{L-1} = N mean_n Lambda_n = sum_n S_n S_n^T for any N; earlier layers differ."""
    net, X, y, _ = make_problem(loss, hidden=(4, 4), activation="tanh", N=8)
    kfra = pk.kfac(net, (X, y), loss, kind="kfra")
    exact = pk.kfac(net, (X, y), loss, kind="exact")
    ref.assert_close(kfra.G[-1], exact.G[-1], 1e-13, "KFRA last layer")
    assert ref.max_rel_err(kfra.G[0], exact.G[0]) > 1e-3


def test_empirical_kfac_vs_reference_and_fisher(make_problem):
    """Empirical K-FAC at N = 1 is exactly the empirical Fisher block grad grad^T."""
    net, X, y, rnet = make_problem("ce", hidden=(4, 3), activation="tanh", N=1)
    dense = pk.kfac(net, (X, y), "ce", kind="empirical").to_dense()
    g = pk.loss_and_grad(net, X, y, "ce")[1]
    ref.assert_close(dense, ref.block_diagonal_part(np.outer(g, g), rnet), 1e-12,
                     "empirical K-FAC N=1 vs grad grad^T blocks")
    ref.assert_close(np.diag(dense), pk.empirical_fisher_diag(net, X, y, "ce"), 1e-12,
                     "empirical K-FAC diagonal vs empirical_fisher_diag")


@pytest.mark.parametrize("loss", ref.LOSSES)
def test_mc_kfac_converges_to_exact(make_problem, loss):
    """A is deterministic. G_mc[l] averages M single-draw estimates of
    sum_n g g^T, unbiased for KFLR's G[l], with exact per-entry variance from
    reference.mc_kfac_G_stats. Over S = 8 seeds: at M = 2000 every |z| < 5.5;
    for M in (100, 2000) the mean z^2 lies in [0.1, 4] (worst case chi2_8/8,
    P(outside) < 1e-3); the squared error falls with M."""
    net, X, y, rnet = make_problem(loss, hidden=(4, 3), activation="tanh", N=6)
    stats = rnet.mc_kfac_G_stats(X, loss)
    exact = pk.kfac(net, (X, y), loss, kind="exact")
    for (mean, _), G in zip(stats, exact.G):
        ref.assert_close(G, mean, 1e-12, "reference MC mean is KFLR")
    L = len(stats)
    sq = {}
    for M in (10, 100, 2000):
        runs = [pk.kfac(net, (X, y), loss, kind="mc", mc_samples=M, seed=s) for s in range(8)]
        for kf in runs:
            for l in range(L):
                ref.assert_close(kf.A[l], exact.A[l], 1e-13, f"MC A[{l}]")
        sq[M] = []
        for l, (mean, var) in enumerate(stats):
            est = np.stack([np.asarray(kf.G[l]) for kf in runs])
            zmax, ratio = ref.mc_check(est, mean, var, M)
            sq[M].append(np.mean(np.sum((est - mean) ** 2, axis=(1, 2))))
            if M >= 100:
                assert 0.1 < ratio < 4.0, (M, l, ratio)
            if M == 2000:
                assert zmax < 5.5, (M, l, zmax)
    for l in range(L):
        assert sq[2000][l] < sq[100][l] < sq[10][l], l


def test_mc_kfac_is_seeded(make_problem):
    net, X, y, _ = make_problem("ce", hidden=(4,), activation="tanh", N=5)
    a = pk.kfac(net, (X, y), "ce", kind="mc", mc_samples=2, seed=7)
    b = pk.kfac(net, (X, y), "ce", kind="mc", mc_samples=2, seed=7)
    c = pk.kfac(net, (X, y), "ce", kind="mc", mc_samples=2, seed=8)
    for l in range(2):
        np.testing.assert_array_equal(a.G[l], b.G[l])
    assert not np.array_equal(a.G[0], c.G[0])


@pytest.mark.parametrize("kind", KINDS)
def test_factors_are_symmetric_psd(make_problem, kind):
    net, X, y, _ = make_problem("ce", hidden=(5, 4), activation="gelu", N=6)
    kf = pk.kfac(net, (X, y), "ce", kind=kind)
    for M in [*kf.A, *kf.G]:
        M = np.asarray(M)
        ref.assert_close(M, M.T, 1e-15, "symmetric")
        assert np.linalg.eigvalsh(M).min() >= -1e-12 * np.abs(M).max()


@pytest.mark.parametrize("kind", KINDS)
def test_float32_factors_agree_with_float64(make_problem, kind):
    net64, X, y, _ = make_problem("ce", hidden=(5, 4), activation="tanh", N=6)
    net32 = pk.MLP(list(net64.sizes), activation="tanh", dtype=np.float32, seed=0)
    net32.theta[:] = net64.theta.astype(np.float32)
    net64.theta[:] = net32.theta.astype(np.float64)
    k32 = pk.kfac(net32, (X.astype(np.float32), y), "ce", kind=kind)
    k64 = pk.kfac(net64, (X, y), "ce", kind=kind)
    for l in range(len(k64.A)):
        assert np.asarray(k32.A[l]).dtype == np.float32 and np.asarray(k32.G[l]).dtype == np.float32
        ref.assert_close(k32.A[l], k64.A[l], 1e-4, f"A[{l}] float32")
        ref.assert_close(k32.G[l], k64.G[l], 1e-4, f"G[{l}] float32")
