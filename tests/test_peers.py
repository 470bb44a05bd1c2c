"""Optional cross-checks against PyTorch, curvlinops and BackPACK.

Skipped when torch (or a peer) is not installed. Everything is float64 on
small networks with pykfac's weights copied into ``nn.Sequential``; losses are
sum-reduced. Conversions: torch's ``MSELoss(reduction="sum")`` is twice
pykfac's "mse"; BackPACK's weight factors leave out the bias row of A.
"""
import numpy as np
import pytest

import pykfac as pk

torch = pytest.importorskip("torch")
nn = torch.nn
# the peers trigger torch's own deprecation warnings (torch.jit.script)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")

ACTS = {
    "identity": nn.Identity,
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.01),
    "elu": nn.ELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "softplus": nn.Softplus,
    "gelu": nn.GELU,
}
SIZES = {"ce": [5, 7, 6, 3], "mse": [5, 7, 6, 2], "bce": [5, 7, 6, 1]}
N = 9


def make(loss, activation, seed=0):
    net = pk.MLP(SIZES[loss], activation=activation, seed=seed)
    rng = np.random.default_rng(seed + 1)
    net.theta = net.theta * 1.7  # away from the near-linear regime of the default init
    X = rng.normal(size=(N, SIZES[loss][0]))
    K = SIZES[loss][-1]
    if loss == "ce":
        y = rng.integers(0, K, N)
    elif loss == "mse":
        y = rng.normal(size=(N, K))
    else:
        y = rng.integers(0, 2, N).astype(float)
    layers = []
    for i, layer in enumerate(net.layers):
        lin = nn.Linear(layer.in_features, layer.out_features, dtype=torch.float64)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(layer.W.copy()))
            lin.bias.copy_(torch.from_numpy(layer.b.copy()))
        layers.append(lin)
        if i < net.n_layers - 1:
            layers.append(ACTS[activation]())
    model = nn.Sequential(*layers)
    Xt = torch.from_numpy(X)
    if loss == "ce":
        yt, lossf, scale = torch.from_numpy(y), nn.CrossEntropyLoss(reduction="sum"), 1.0
    elif loss == "mse":
        yt, lossf, scale = torch.from_numpy(y), nn.MSELoss(reduction="sum"), 0.5
    else:
        yt, lossf, scale = torch.from_numpy(y)[:, None], nn.BCEWithLogitsLoss(reduction="sum"), 1.0
    return net, X, y, model, Xt, yt, lossf, scale


def flat(tensors):
    return torch.cat([t.detach().reshape(-1) for t in tensors]).numpy()


@pytest.mark.parametrize("activation", list(ACTS))
@pytest.mark.parametrize("loss", ["mse", "ce", "bce"])
def test_loss_grad_jacobian_hessian_vs_torch(loss, activation):
    net, X, y, model, Xt, yt, lossf, scale = make(loss, activation)
    params = list(model.parameters())
    value = lossf(model(Xt), yt) * scale
    grad = torch.autograd.grad(value, params)
    L, g = pk.loss_and_grad(net, X, y, loss)
    assert L == pytest.approx(value.item(), rel=1e-12)
    np.testing.assert_allclose(g, flat(grad), rtol=1e-10, atol=1e-12)

    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in params]
    sizes = [p.numel() for p in params]

    def unflat(theta):
        out, o = {}, 0
        for name, shp, n in zip(names, shapes, sizes):
            out[name] = theta[o:o + n].view(shp)
            o += n
        return out

    theta0 = torch.cat([p.detach().reshape(-1) for p in params])
    f = lambda th: torch.func.functional_call(model, unflat(th), (Xt,))
    J = torch.func.jacrev(f)(theta0)  # (N, K, D)
    np.testing.assert_allclose(pk.jacobian(net, X), J.numpy(), rtol=1e-10, atol=1e-12)

    H = torch.func.hessian(lambda th: lossf(f(th), yt) * scale)(theta0)
    np.testing.assert_allclose(pk.hessian(net, X, y, loss), H.numpy(), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("activation", ["tanh", "relu", "gelu"])
@pytest.mark.parametrize("loss", ["mse", "ce", "bce"])
def test_ggn_matvec_vs_curvlinops(loss, activation):
    curvlinops = pytest.importorskip("curvlinops")
    net, X, y, model, Xt, yt, lossf, scale = make(loss, activation)
    params = list(model.parameters())
    op = curvlinops.GGNLinearOperator(model, lossf, params, [(Xt, yt)], check_deterministic=False)
    V = np.random.default_rng(3).normal(size=(net.num_params, 3))
    theirs = (op @ torch.from_numpy(V)).numpy() * scale
    np.testing.assert_allclose(pk.ggn_matvec(net, X, y, loss, V), theirs, rtol=1e-10, atol=1e-11)
    Gt = (op @ torch.eye(net.num_params, dtype=torch.float64)).numpy() * scale
    np.testing.assert_allclose(pk.ggn(net, X, y, loss), Gt, rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("loss", ["mse", "ce", "bce"])
def test_kfac_exact_vs_curvlinops(loss):
    curvlinops = pytest.importorskip("curvlinops")
    net, X, y, model, Xt, yt, lossf, scale = make(loss, "tanh")
    params = list(model.parameters())
    op = curvlinops.KFACLinearOperator(model, lossf, params, [(Xt, yt)], check_deterministic=False,
                                       fisher_type="type-2", separate_weight_and_bias=False,
                                       num_data=N, num_per_example_loss_terms=1)
    op.compute_kronecker_factors()
    ours = pk.kfac(net, (X, y), loss, kind="exact")
    lin_names = [str(i) for i, m in enumerate(model) if isinstance(m, nn.Linear)]
    for l, name in enumerate(lin_names):
        np.testing.assert_allclose(ours.A[l], op._input_covariances[name].numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(ours.G[l], op._gradient_covariances[name].numpy() * scale,
                                   rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "relu"])
@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_diag_ggn_kflr_kfra_vs_backpack(loss, activation):
    backpack = pytest.importorskip("backpack")
    from backpack.extensions import KFLR, KFRA, DiagGGNExact

    net, X, y, model, Xt, yt, lossf, scale = make(loss, activation)
    model, lossf = backpack.extend(model), backpack.extend(lossf)
    lins = [m for m in model if isinstance(m, nn.Linear)]
    value = lossf(model(Xt), yt)
    # BackPACK 1.7's KFRA for MSELoss fails on float64 (it builds a float32
    # tensor internally), so KFRA is compared for ce only.
    kinds = [("exact", "kflr")] + ([("kfra", "kfra")] if loss == "ce" else [])
    extensions = [DiagGGNExact(), KFLR()] + ([KFRA()] if loss == "ce" else [])
    with backpack.backpack(*extensions):
        value.backward()
    diag = flat([p.diag_ggn_exact for p in model.parameters()]) * scale
    np.testing.assert_allclose(pk.diag_ggn(net, X, y, loss), diag, rtol=1e-10, atol=1e-12)
    for kind, attr in kinds:
        ours = pk.kfac(net, (X, y), loss, kind=kind)
        for l, m in enumerate(lins):
            G, A_w = getattr(m.weight, attr)
            q = m.in_features
            # BackPACK's A is the weight-only block (1/N) sum a a^T; ours has the bias row last.
            np.testing.assert_allclose(ours.A[l][:q, :q], A_w.numpy(), rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(ours.G[l], G.numpy() * scale, rtol=1e-9, atol=1e-12)
