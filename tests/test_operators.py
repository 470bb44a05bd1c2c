"""pk.InverseOperator: (A + damping I)^-1 products by CG, MINRES, LSMR and the Neumann
series, against np.linalg.solve of the dense matrices; pk.SubmatrixOperator against
the dense block."""
import numpy as np
import pytest

import pykfac as pk


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    net = pk.MLP([4, 8, 3], activation="tanh", seed=0)
    X, y = rng.normal(size=(20, 4)), rng.integers(0, 3, 20)
    B = rng.normal(size=(net.num_params, 3))
    return net, X, y, B


def dense_solve(A, damping, B):
    return np.linalg.solve(A + damping * np.eye(len(A)), B)


def test_cg_on_the_damped_ggn(problem):
    net, X, y, B = problem
    G = pk.ggn(net, X, y, "ce")
    op = pk.InverseOperator(pk.GGNOperator(net, X, y, "ce"), damping=0.1, rtol=1e-10)
    want = dense_solve(G, 0.1, B)
    np.testing.assert_allclose(op @ B, want, atol=1e-8 * np.abs(want).max())
    assert len(op.iterations) == 3 and all(1 <= k < 200 for k in op.iterations)
    np.testing.assert_allclose(op @ B[:, 0], want[:, 0], atol=1e-8 * np.abs(want).max())
    assert op.shape == G.shape and op.dtype == np.float64
    # symmetric: its adjoint is itself
    np.testing.assert_allclose(op.H @ B, op @ B, rtol=0, atol=0)
    # a preconditioner changes the path, not the answer
    M = pk.kfac(net, (X, y), "ce").as_linear_operator(0.1, inverse=True)
    pre = pk.InverseOperator(pk.GGNOperator(net, X, y, "ce"), damping=0.1, rtol=1e-10, M=M)
    np.testing.assert_allclose(pre @ B, want, atol=1e-8 * np.abs(want).max())


def test_minres_and_lsmr_on_the_indefinite_damped_hessian(problem):
    net, X, y, B = problem
    H = pk.hessian(net, X, y, "ce")
    assert np.linalg.eigvalsh(H + 0.01 * np.eye(len(H)))[0] < -1  # CG's assumptions fail here
    want = dense_solve(H, 0.01, B)
    Hop = pk.HessianOperator(net, X, y, "ce")
    cond = np.linalg.cond(H + 0.01 * np.eye(len(H)))
    for method, rtol in (("minres", 1e-12), ("lsmr", 1e-13)):
        op = pk.InverseOperator(Hop, damping=0.01, method=method, rtol=rtol, maxiter=20000)
        # backward-stable solvers: the error is the residual tolerance times the condition number
        np.testing.assert_allclose(op @ B, want, atol=100 * rtol * cond * np.abs(want).max())


def test_lsmr_on_a_nonsymmetric_matrix():
    rng = np.random.default_rng(3)
    N = rng.normal(size=(15, 15))
    B = rng.normal(size=(15, 2))
    op = pk.InverseOperator(N, damping=0.5, method="lsmr", rtol=1e-13, maxiter=5000)
    want = dense_solve(N, 0.5, B)
    np.testing.assert_allclose(op @ B, want, atol=1e-9 * np.abs(want).max())
    with pytest.raises(NotImplementedError, match="no adjoint"):
        op.H @ B


def test_neumann_series_error_falls_like_the_contraction_factor(problem):
    net, X, y, B = problem
    G = pk.ggn(net, X, y, "ce")
    w = np.linalg.eigvalsh(G)
    scale = 1 / (w[-1] + 1.0)
    rho = 1 - scale * (w[0] + 1.0)  # the largest |1 - scale lambda| of G + I
    want = dense_solve(G, 1.0, B)
    errors = []
    for K in (10, 40, 160):
        op = pk.InverseOperator(G, damping=1.0, method="neumann", scale=scale, num_terms=K)
        errors.append(np.abs(op @ B - want).max())
        # the truncation error is (A + dI)^-1 (I - scale (A + dI))^K B: at most rho^K |want|-scale terms
        assert errors[-1] <= rho ** K * np.linalg.norm(want, axis=0).max() * 1.0001 + 1e-13
    assert errors[0] > errors[1] > errors[2]
    # through the operator too, the same numbers as through the dense matrix
    op = pk.InverseOperator(pk.GGNOperator(net, X, y, "ce"), damping=1.0, method="neumann", scale=scale,
                            num_terms=40)
    dense = pk.InverseOperator(G, damping=1.0, method="neumann", scale=scale, num_terms=40)
    np.testing.assert_allclose(op @ B, dense @ B, rtol=1e-10, atol=1e-12)
    with pytest.raises(pk.LinAlgError, match="neumann: the series diverged"):
        pk.InverseOperator(G, damping=1.0, method="neumann", scale=3 * scale, num_terms=5000) @ B


def test_non_convergence_and_bad_arguments(problem):
    net, X, y, B = problem
    G = pk.ggn(net, X, y, "ce")
    with pytest.raises(pk.LinAlgError, match="cg did not reach rtol=1e-08 in 2 iterations"):
        pk.InverseOperator(G, damping=1e-3, maxiter=2) @ B
    with pytest.raises(ValueError, match="method: expected one of"):
        pk.InverseOperator(G, method="gmres")
    for bad in (-1.0, np.nan, True, "1"):
        with pytest.raises(ValueError, match="damping: expected a finite number >= 0"):
            pk.InverseOperator(G, damping=bad)
    with pytest.raises(ValueError, match="rtol: expected a finite number > 0"):
        pk.InverseOperator(G, rtol=0.0)
    with pytest.raises(ValueError, match="maxiter"):
        pk.InverseOperator(G, maxiter=0)
    with pytest.raises(ValueError, match="num_terms"):
        pk.InverseOperator(G, method="neumann", num_terms=0)
    with pytest.raises(ValueError, match="scale"):
        pk.InverseOperator(G, method="neumann", scale=-1.0)
    with pytest.raises(ValueError, match="M: a preconditioner needs method"):
        pk.InverseOperator(G, method="lsmr", M=np.eye(len(G)))
    with pytest.raises(ValueError, match=rf"M: expected a \({len(G)}, {len(G)}\) operator"):
        pk.InverseOperator(G, M=np.eye(3))
    with pytest.raises(ValueError, match="A: expected a square operator"):
        pk.InverseOperator(np.ones((3, 4)))
    with pytest.raises(ValueError, match="B: contains NaN"):
        pk.InverseOperator(G) @ np.full(len(G), np.nan)
    Bc = B.copy()
    pk.InverseOperator(G, damping=0.1) @ B
    np.testing.assert_array_equal(B, Bc)  # the right-hand side is not modified


def test_submatrix_operator_is_the_dense_block(problem):
    net, X, y, B = problem
    H = pk.hessian(net, X, y, "ce")
    Hop = pk.HessianOperator(net, X, y, "ce")
    D = len(H)
    rng = np.random.default_rng(7)
    rows, cols = rng.permutation(D)[:9], np.arange(D - 12, D)   # scattered rows, the last layer's columns
    sub = pk.SubmatrixOperator(Hop, rows, cols)
    want = H[np.ix_(rows, cols)]
    assert sub.shape == want.shape
    V, U = rng.normal(size=(12, 2)), rng.normal(size=(9, 3))
    np.testing.assert_allclose(sub @ V, want @ V, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(sub @ V[:, 0], want @ V[:, 0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(sub.T @ U, want.T @ U, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(sub.matmat(np.eye(12)), want, rtol=1e-12, atol=1e-12)
    # a non-symmetric array: the adjoint is the block of A^T
    N = rng.normal(size=(6, 6))
    s2 = pk.SubmatrixOperator(N, [4, 0], [1, 2, 5])
    np.testing.assert_allclose(s2.T @ np.array([1.0, -2.0]), N[np.ix_([4, 0], [1, 2, 5])].T @ [1.0, -2.0],
                               rtol=1e-14)
    for bad, msg in (([], "rows: expected a non-empty"), ([0, D], r"rows: expected indices in \[0, "),
                     ([1, 1], "rows: expected distinct"), ([0.5], "rows: expected a non-empty 1-D array of integer")):
        with pytest.raises(ValueError, match=msg):
            pk.SubmatrixOperator(Hop, bad, cols)
    with pytest.raises(ValueError, match="cols"):
        pk.SubmatrixOperator(Hop, rows, [-1])
