"""Marginal-likelihood training (Immer et al. 2021, Algorithm 1): the network's
MAP and the Laplace posterior's hyperparameters optimised together."""
import math
import numbers

import numpy as np

from ._data import _is_pair, flag, iter_batches, resolve_seed
from .laplace import LIKELIHOODS, STRUCTURES, Laplace, _Prior, _choice
from .mlp import MLP
from .optim import SGD, Adam
from .train import train

__all__ = ["marglik_training"]

_RESERVED = ("prior_precision", "sigma_noise", "temperature", "subset", "subnetwork_indices")


def _count(value, name, lo):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < lo:
        raise ValueError(f"{name}: expected an int >= {lo}, got {value!r}")
    return int(value)


def _positive(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (0 < value < math.inf):
        raise ValueError(f"{name}: expected a finite number > 0, got {value!r}")
    return float(value)


def marglik_training(net, data, likelihood="classification", structure="kron", n_epochs=300, lr=1e-3,
                     optimizer="adam", batch_size=None, prior_structure="layer", prior_precision=1.0,
                     sigma_noise=1.0, temperature=1.0, fix_sigma_noise=False, lr_hyp=0.1, n_hypersteps=10,
                     marglik_frequency=1, n_epochs_burnin=0, seed=0, progress=False, **laplace_kwargs):
    r"""Train ``net`` and tune the prior precision (and σ) by the Laplace marginal likelihood.

    Every epoch trains the network on the negative log joint
    :math:`L(\theta)/(\sigma^2 T) + \tfrac12 \theta^\top P_0 \theta` (σ = 1 unless
    regression), as the mean batch loss plus a per-parameter weight decay
    :math:`\eta = \mathrm{diag}(P_0)\, \sigma^2 T / N`. Every ``marglik_frequency``
    epochs from ``n_epochs_burnin`` on, it fits ``pk.Laplace(net, likelihood,
    structure)`` at the current parameters and takes ``n_hypersteps`` Adam steps
    (rate ``lr_hyp``) up the exact gradient of :math:`\log Z` with respect to
    :math:`\log P_0` (and :math:`\log\sigma`), without refitting. The network of
    the largest :math:`\log Z` seen is restored at the end (laplace-torch's
    ``marglik_training``).

    Parameters
    ----------
    net : MLP
        Updated in place; on return it holds the parameters of the best
        :math:`\log Z`.
    data : (X, y) or a re-iterable of (X, y) batches
        As :func:`pykfac.train` (``batch_size`` splits one pair into shuffled
        minibatches) and :meth:`Laplace.fit` (all of it, every marglik step).
    likelihood, structure :
        As :class:`Laplace`; further keywords (``kind``, ``rank``,
        ``kron_damping``, ...) are passed to it.
    n_epochs : int
    lr, optimizer : float, {"adam", "sgd"}
        The network's optimiser (:class:`pykfac.optim.Adam`, or
        :class:`pykfac.optim.SGD` with Nesterov momentum 0.9).
    prior_structure : {"scalar", "layer", "param"}
        One prior precision, one per layer, or one per parameter (not kron).
    prior_precision, sigma_noise, temperature : float
        Initial :math:`P_0 = \delta I`, initial σ (regression), and T.
    fix_sigma_noise : bool
        Keep σ at ``sigma_noise`` (regression).
    lr_hyp, n_hypersteps, marglik_frequency, n_epochs_burnin :
        The hyperparameter updates (Adam on the log values, betas (0.9, 0.999)).
    seed : int
        Seeds the minibatch shuffling.
    progress : bool
        A tqdm bar over epochs.

    Returns
    -------
    la : Laplace
        Fitted at the best parameters with the best hyperparameters.
    net : MLP
        The same object as the argument.
    margliks : ndarray
        :math:`\log Z` after every hyperparameter step (one per marglik step
        when ``n_hypersteps=0``).
    losses : ndarray (n_epochs,)
        The mean batch loss of every epoch (without the prior term).
    """
    if not isinstance(net, MLP):
        raise TypeError(f"net: expected a pykfac.MLP, got {type(net).__name__}")
    _choice(likelihood, LIKELIHOODS, "likelihood")
    _choice(structure, STRUCTURES, "structure")
    _choice(prior_structure, ("scalar", "layer", "param"), "prior_structure")
    if structure in ("kron", "ekfac") and prior_structure == "param":
        raise ValueError(f"prior_structure: structure={structure!r} supports 'scalar' or 'layer' priors")
    _choice(optimizer, ("adam", "sgd"), "optimizer")
    bad = sorted(set(laplace_kwargs) & set(_RESERVED))
    if bad:
        raise TypeError(f"{bad[0]}: set by marglik_training (the posterior is over all parameters "
                        "with the tuned prior_precision and sigma_noise)")
    n_epochs = _count(n_epochs, "n_epochs", 1)
    n_hypersteps = _count(n_hypersteps, "n_hypersteps", 0)
    marglik_frequency = _count(marglik_frequency, "marglik_frequency", 1)
    n_epochs_burnin = _count(n_epochs_burnin, "n_epochs_burnin", 0)
    if n_epochs_burnin > n_epochs:
        raise ValueError(f"n_epochs_burnin: expected <= n_epochs = {n_epochs} (no marginal likelihood step "
                         f"would run), got {n_epochs_burnin}")
    lr_hyp = _positive(lr_hyp, "lr_hyp")
    temperature = _positive(temperature, "temperature")
    delta0 = _positive(prior_precision, "prior_precision")
    sigma0 = _positive(sigma_noise, "sigma_noise")
    fix_sigma_noise, progress = flag(fix_sigma_noise, "fix_sigma_noise"), flag(progress, "progress")
    regression = likelihood == "regression"
    if not regression and sigma0 != 1.0:
        raise ValueError(f"sigma_noise: only regression has observation noise, got {sigma0}")
    tune_sigma = regression and not fix_sigma_noise
    seed = resolve_seed(seed)

    offsets = np.cumsum([0] + [layer.num_params for layer in net.layers]).tolist()
    size = {"scalar": 1, "layer": len(offsets) - 1, "param": offsets[-1]}[prior_structure]
    # the hyperparameters on the log scale: log P0 values, then log sigma
    x = np.concatenate([np.full(size, math.log(delta0)), [math.log(sigma0)] if tune_sigma else []])

    def hyper(x):
        prior = np.exp(x[:size])
        return (float(prior[0]) if size == 1 else prior), (float(np.exp(x[size])) if tune_sigma else sigma0)

    N = sum(np.shape(X)[0] for X, _ in ([data] if _is_pair(data) else iter_batches(data)))
    if N < 1:
        raise ValueError("data: no rows")

    def weight_decay(x):
        prior, sigma = hyper(x)
        return _Prior(prior, offsets, prior_structure).diag * (sigma * sigma * temperature / N)

    loss = LIKELIHOODS[likelihood]
    opt = (Adam(net, loss, lr, weight_decay=weight_decay(x)) if optimizer == "adam"
           else SGD(net, loss, lr, momentum=0.9, weight_decay=weight_decay(x)))
    m, v, t = np.zeros_like(x), np.zeros_like(x), 0
    b1, b2, eps = 0.9, 0.999, 1e-8
    epoch_seeds = np.random.default_rng(seed).integers(0, 2 ** 63, size=n_epochs)
    best = (-math.inf, None, None)
    margliks, losses = [], []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_epochs, desc="marglik_training")
    for epoch in range(1, n_epochs + 1):
        opt.weight_decay = weight_decay(x)
        hist = train(net, opt, data, epochs=1, progress=False, batch_size=batch_size, shuffle=True,
                     seed=int(epoch_seeds[epoch - 1]))
        losses.append(float(np.mean(hist["loss"])))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=losses[-1], log_Z=margliks[-1] if margliks else None)
        if epoch % marglik_frequency or epoch < n_epochs_burnin:
            continue
        prior, sigma = hyper(x)
        la = Laplace(net, likelihood, structure, prior_precision=prior, sigma_noise=sigma,
                     temperature=temperature, **laplace_kwargs).fit(data)
        if n_hypersteps == 0:
            margliks.append(la.log_marginal_likelihood())
        for _ in range(n_hypersteps):
            g_prior, g_sigma = la.log_marginal_likelihood_grad(prior, sigma)
            g = -np.concatenate([np.atleast_1d(g_prior), [g_sigma] if tune_sigma else []])
            t += 1
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            x = x - lr_hyp * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
            prior, sigma = hyper(x)
            margliks.append(la.log_marginal_likelihood(prior, sigma))
        if margliks[-1] > best[0]:
            best = (margliks[-1], net.theta.copy(), x.copy())
    if bar is not None:
        bar.close()
    if best[1] is not None:
        net.theta = best[1]
        x = best[2]
    prior, sigma = hyper(x)
    la = Laplace(net, likelihood, structure, prior_precision=prior, sigma_noise=sigma, temperature=temperature,
                 **laplace_kwargs).fit(data)
    return la, net, np.array(margliks), np.array(losses)
