"""A minimal training loop for the optimisers of :mod:`pykfac.optim`."""
import math
import numbers
import time

import numpy as np

from ._data import _is_pair, resolve_seed

__all__ = ["train"]


def _epoch_batches(data, batch_size, rng):
    """The batches of one epoch."""
    if _is_pair(data):
        X, y = data
        N = np.shape(X)[0]
        if batch_size is None or batch_size >= N:
            return [(X, y)]
        X, y = np.asarray(X), np.asarray(y)
        order = rng.permutation(N) if rng is not None else np.arange(N)
        return [(X[idx], y[idx]) for idx in (order[i:i + batch_size] for i in range(0, N, batch_size))]
    if batch_size is not None:
        raise ValueError("batch_size: only for data given as one (X, y) pair; "
                         "an iterable of batches is used as it is")
    return data


def train(net, opt, data, epochs=1, progress=True, batch_size=None, shuffle=True, seed=0,
          max_steps=None, target_loss=None, callback=None):
    """Run ``opt.step`` over ``data`` for ``epochs`` passes.

    Parameters
    ----------
    net : MLP
        The network ``opt`` updates (checked: ``opt.net is net``).
    opt : pykfac.optim.KFAC, SGD or Adam
    data : (X, y) tuple or re-iterable of (X, y) batches
        One pair is either one full batch per epoch (``batch_size=None``) or
        split into minibatches of ``batch_size`` rows (reshuffled every epoch
        when ``shuffle``). A list of batches is used in its order every
        epoch; a one-shot iterator only supports one epoch.
    epochs : int >= 1
    progress : bool
        A tqdm bar over steps with the current loss.
    batch_size : int or None
    shuffle : bool
    seed : int
        Seeds the shuffling (``numpy.random.default_rng``).
    max_steps : int or None
        Stop after this many steps in total.
    target_loss : float or None
        Stop as soon as a step returns a batch loss <= target_loss.
    callback : callable or None
        ``callback(step, loss)`` after every step (not timed); returning True stops.

    Returns
    -------
    dict
        ``loss`` (float64 array: the mean batch loss of every step, before
        its update, as ``opt.step`` returns it), ``time`` (cumulative
        wall-clock seconds spent in ``opt.step`` after every step),
        ``cpu_time`` (the same in process CPU seconds, ``time.process_time``:
        less sensitive to other jobs on a shared machine), ``epoch`` (int
        array), and ``steps`` (the number of steps run).
    """
    if getattr(opt, "net", None) is not net:
        raise ValueError("opt: the optimiser was built for another network (opt.net is not net)")
    if isinstance(epochs, bool) or not isinstance(epochs, numbers.Integral) or epochs < 1:
        raise ValueError(f"epochs: expected an int >= 1, got {epochs!r}")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral)
                                   or batch_size < 1):
        raise ValueError(f"batch_size: expected an int >= 1 or None, got {batch_size!r}")
    if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(max_steps, numbers.Integral)
                                  or max_steps < 1):
        raise ValueError(f"max_steps: expected an int >= 1 or None, got {max_steps!r}")
    if target_loss is not None:
        if isinstance(target_loss, (bool, np.bool_)) or not isinstance(target_loss, numbers.Real):
            raise TypeError(f"target_loss: expected a number or None, got {target_loss!r}")
        target_loss = float(target_loss)
        if math.isnan(target_loss):
            raise ValueError("target_loss: expected a number, got NaN")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback: expected a callable(step, loss) or None, got {type(callback).__name__}")
    if not _is_pair(data) and (isinstance(data, (str, bytes)) or not hasattr(data, "__iter__")):
        raise TypeError(f"data: expected an (X, y) tuple or an iterable of (X, y) batches, "
                        f"got {type(data).__name__}")
    if _is_pair(data) and batch_size is not None and np.shape(data[0])[:1] != np.shape(data[1])[:1]:
        raise ValueError(f"y: expected one label row per row of X ({np.shape(data[0])[0]}) to split "
                         f"into minibatches, got {np.shape(data[1])[:1][0] if np.ndim(data[1]) else 'a scalar'}")
    rng = np.random.default_rng(resolve_seed(seed)) if shuffle else None
    bar = None
    if progress:
        from tqdm.auto import tqdm

        total = None
        if _is_pair(data):
            N = np.shape(data[0])[0]
            per = 1 if batch_size is None else math.ceil(N / batch_size)
            total = per * epochs
        elif hasattr(data, "__len__"):
            total = len(data) * epochs
        if max_steps is not None:
            total = max_steps if total is None else min(total, max_steps)
        bar = tqdm(total=total, desc=type(opt).__name__)
    losses, times, cpu_times, epoch_of = [], [], [], []
    elapsed = cpu = 0.0
    done = False
    try:
        for epoch in range(epochs):
            seen = 0
            for i, batch in enumerate(_epoch_batches(data, batch_size, rng)):
                if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
                    raise TypeError(f"data: batch {i} is not an (X, y) pair")
                seen += 1
                t0, c0 = time.perf_counter(), time.process_time()
                value = opt.step(batch[0], batch[1])
                elapsed += time.perf_counter() - t0
                cpu += time.process_time() - c0
                losses.append(value)
                times.append(elapsed)
                cpu_times.append(cpu)
                epoch_of.append(epoch)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{value:.4g}")
                stop = callback(len(losses), value) if callback is not None else False
                if (stop or (max_steps is not None and len(losses) >= max_steps)
                        or (target_loss is not None and value <= target_loss)):
                    done = True
                    break
            if done:
                break
            if not seen:
                raise ValueError(f"data: no batches in epoch {epoch} (a one-shot iterator is "
                                 f"exhausted after one epoch; pass a list)")
    finally:
        if bar is not None:
            bar.close()
    return {"loss": np.asarray(losses, dtype=np.float64), "time": np.asarray(times, dtype=np.float64),
            "cpu_time": np.asarray(cpu_times, dtype=np.float64),
            "epoch": np.asarray(epoch_of, dtype=np.int64), "steps": len(losses)}
