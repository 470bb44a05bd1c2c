"""Iterating over data given as one (X, y) pair or an iterable of (X, y) batches."""
import numpy as np

__all__ = ["iter_batches", "seed_stream", "resolve_seed", "flag"]


def _is_pair(data):
    # (X, y) -- as opposed to a tuple of (X, y) batches, whose items are pairs.
    # X may be a nested list of rows; a batch inside a tuple of batches is a tuple.
    return isinstance(data, tuple) and len(data) == 2 and not isinstance(data[0], tuple)


def iter_batches(data, progress=False, desc=None):
    """Yield (X, y) batches from ``data``: an ``(X, y)`` tuple or an iterable
    (list, generator, tuple of tuples) of such pairs. ``progress=True`` shows a
    tqdm bar."""
    if _is_pair(data):
        batches = [data]
    elif isinstance(data, (str, bytes)) or not hasattr(data, "__iter__"):
        raise TypeError(f"data: expected an (X, y) tuple or an iterable of (X, y) batches, got {type(data).__name__}")
    else:
        batches = data
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc=desc, total=len(batches) if hasattr(batches, "__len__") else None)
    seen = 0
    for i, batch in enumerate(batches):
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise TypeError(f"data: batch {i} is not an (X, y) pair")
        seen += 1
        yield batch[0], batch[1]
    if not seen:
        raise ValueError("data: no batches")


def resolve_seed(seed):
    """An int seed for the C core: ``seed`` itself, or fresh OS entropy for None."""
    if seed is None:
        return int(np.random.SeedSequence().entropy % (1 << 64))
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed: expected an int or None, got {type(seed).__name__}")
    if seed < 0 or seed >= 1 << 64:
        raise ValueError(f"seed: expected an int in [0, 2**64), got {seed}")
    return int(seed)


def seed_stream(seed):
    """Independent per-batch seeds derived from one user seed (reproducible)."""
    ss = np.random.SeedSequence(resolve_seed(seed))
    while True:
        (child,) = ss.spawn(1)
        yield int(child.generate_state(1, dtype=np.uint64)[0])


def flag(value, name):
    """A bool argument; truthy stand-ins such as "no" or 0.5 are refused."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected True or False, got {type(value).__name__}")
    return bool(value)
