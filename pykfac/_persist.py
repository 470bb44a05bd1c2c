"""Save files of pykfac objects (``Laplace.save``, ``Optimizer.save``): one
``.npz`` archive, never pickle.

Layout: ``meta`` (a JSON string: format name, version, settings, sizes,
dtype), ``checksum`` (hex SHA-256) and the named arrays. The checksum covers
the JSON text and, in sorted name order, every array's name, dtype, shape and
bytes, so any change -- a flipped bit, a truncated array, edited metadata, a
renamed, missing or extra array -- is detected on load.

Readers validate in this order and raise ``ValueError`` naming the file for
every failure: the archive can be read at all (``np.load(allow_pickle=False)``;
zip CRC errors, truncation and non-npz files land here), the format name, the
version, the checksum, then (``check_arrays``) exactly the expected array
names with the expected dtypes and shapes derived from the metadata.
"""
import contextlib
import hashlib
import json
import os

import numpy as np

__all__ = ["checksum", "write", "read", "check_arrays", "malformed", "float_dtype", "int_list"]

_RESERVED = ("meta", "checksum")


def checksum(meta_json, arrays):
    """Hex SHA-256 of the metadata text and the arrays (sorted by name)."""
    h = hashlib.sha256(meta_json.encode())
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        h.update(key.encode())
        h.update(str(a.dtype).encode())
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _is_path(path):
    return isinstance(path, (str, bytes, os.PathLike))


def write(path, fmt, version, meta, arrays):
    """Write ``meta`` (JSON-serialisable dict; ``format`` and ``version`` are
    added) and the numeric ``arrays`` to ``path`` (a path or a binary file)."""
    for key, a in arrays.items():
        if key in _RESERVED:
            raise AssertionError(f"array name {key!r} is reserved")
        # numeric only, so np.savez never pickles (its allow_pickle needs numpy >= 2.1)
        if not isinstance(a, np.ndarray) or a.dtype.kind not in "biuf":
            raise AssertionError(f"array {key!r} is not a numeric ndarray")
    meta_json = json.dumps({**meta, "format": fmt, "version": version}, sort_keys=True,
                           allow_nan=False)
    digest = checksum(meta_json, arrays)
    payload = {k: np.ascontiguousarray(a) for k, a in arrays.items()}
    if _is_path(path):
        with open(path, "wb") as fh:
            np.savez(fh, meta=np.array(meta_json), checksum=np.array(digest), **payload)
    else:
        np.savez(path, meta=np.array(meta_json), checksum=np.array(digest), **payload)


def _load_npz(fh, path, what):
    """All members of the archive as arrays; ValueError if it is not a readable npz."""
    bad = f"{path}: not a pykfac {what} file"
    try:
        z = np.load(fh, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise ValueError(bad)
        with z:
            return {k: z[k] for k in z.files}
    except (MemoryError, FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except Exception as e:  # noqa: BLE001 -- damaged bytes surface as many types
        # (zipfile.BadZipFile, EOFError, ValueError, NotImplementedError for a
        # flipped compression method, RuntimeError for a flipped encryption flag,
        # zlib/lzma errors, ...): all mean the archive is unreadable
        raise ValueError(f"{bad} (unreadable: {type(e).__name__}: {e})") from None


def _text(files, key, bad):
    a = files.pop(key, None)
    if not isinstance(a, np.ndarray) or a.ndim != 0 or a.dtype.kind != "U":
        raise ValueError(bad)
    return str(a)


def read(path, fmt, versions, what):
    """(meta dict, arrays dict) of a file written by :func:`write` with format
    name ``fmt`` and a version in ``versions``; the checksum is verified."""
    bad = f"{path}: not a pykfac {what} file"
    if _is_path(path):
        with open(path, "rb") as fh:
            files = _load_npz(fh, path, what)
    else:
        files = _load_npz(path, path, what)
    meta_json = _text(files, "meta", bad)
    digest = _text(files, "checksum", bad)
    try:
        meta = json.loads(meta_json)
    except ValueError:
        raise ValueError(bad) from None
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        got = meta.get("format") if isinstance(meta, dict) else None
        raise ValueError(bad + (f" (format {got!r}, expected {fmt!r})" if isinstance(got, str) else ""))
    version = meta.get("version")
    if isinstance(version, bool) or version not in versions:
        raise ValueError(f"{path}: format version {version!r} is not supported (this pykfac reads "
                         f"version{'s' if len(versions) > 1 else ''} "
                         f"{', '.join(str(v) for v in versions)})")
    if checksum(meta_json, files) != digest:
        raise ValueError(f"{path}: checksum mismatch (the file is corrupted or was modified)")
    return meta, files


def check_arrays(path, arrays, spec):
    """Exactly the arrays of ``spec`` {name: (shape, dtype)}, each with that
    dtype and shape. A shape entry may be a string: a dimension that can take
    any value but the same one wherever the string appears. A shape of None
    checks the dtype only (the caller validates the shape)."""
    missing = sorted(set(spec) - set(arrays))
    extra = sorted(set(arrays) - set(spec))
    if missing or extra:
        parts = ([f"missing arrays {missing}"] if missing else []) + \
                ([f"unexpected arrays {extra}"] if extra else [])
        raise ValueError(f"{path}: {'; '.join(parts)}")
    bound = {}
    for key in sorted(spec):
        shape, dtype = spec[key]
        a = arrays[key]
        if a.dtype != np.dtype(dtype):
            raise ValueError(f"{path}: array {key!r} has dtype {a.dtype}, expected {np.dtype(dtype)}")
        if shape is None:
            continue
        ok = a.ndim == len(shape)
        for got, want in zip(a.shape, shape):
            if isinstance(want, str):
                ok &= bound.setdefault(want, got) == got
            else:
                ok &= got == want
        if not ok:
            want = tuple(bound.get(s, s) if isinstance(s, str) else s for s in shape)
            raise ValueError(f"{path}: array {key!r} has shape {a.shape}, expected {want}")
    return bound


@contextlib.contextmanager
def malformed(path):
    """Metadata that passed the checksum but does not make sense (a file written
    by other software, or edited and re-checksummed): ValueError naming the file
    instead of a KeyError or TypeError deep inside the loader."""
    try:
        yield
    except (KeyError, TypeError, AttributeError, IndexError, ValueError, OverflowError) as e:
        raise ValueError(f"{path}: invalid or inconsistent contents ({type(e).__name__}: {e})") from None


def float_dtype(name):
    """The network dtype recorded in a file: float32 or float64 only."""
    if name not in ("float32", "float64"):
        raise ValueError(f"dtype {name!r} (expected 'float32' or 'float64')")
    return np.dtype(name)


def int_list(values, name, lo=1):
    """A list of ints >= lo from JSON (bools refused)."""
    if not isinstance(values, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= lo for v in values):
        raise ValueError(f"{name}: expected a list of ints >= {lo}, got {values!r}")
    return list(values)
