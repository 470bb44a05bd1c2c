"""Execute every notebook in notebooks/ top to bottom; any error fails the test.

The kernel is started from a private kernel spec that runs THIS interpreter
(``sys.executable -m ipykernel_launcher``), so the notebooks see the same
Python, NumPy and pykfac as the test process, whatever "python3" kernel the
machine has registered. The kernel inherits the test process's environment
(PYTHONPATH, e.g. ``PYTHONPATH=/tmp/x/lib`` from ``tools/devbuild.sh``), and
the directory pykfac was imported from is put on its PYTHONPATH when it is not
a site-packages directory (an in-place build found through the repository root).
A cell prepended to each notebook asserts that the kernel imports the same
pykfac. The working directory is a fresh temporary directory, so nothing the
notebooks write lands in the repository.

Skipped (not failed) when nbclient, nbformat, ipykernel or matplotlib is
missing: ``pip install ".[test]"`` installs them.
"""
import json
import os
import re
import site
import sys
from pathlib import Path

import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CELL_TIMEOUT = 120  # seconds per cell
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _pykfac_location():
    """(directory to put on PYTHONPATH or None, absolute path of pykfac/__init__.py)."""
    import pykfac

    init = os.path.abspath(pykfac.__file__)
    parent = os.path.dirname(os.path.dirname(init))
    site_dirs = set()
    for d in list(site.getsitepackages()) + [site.getusersitepackages()]:
        site_dirs.add(os.path.realpath(d))
    if os.path.realpath(parent) in site_dirs:
        return None, init  # an installed package: the same interpreter finds it
    return parent, init


def _kernel_env(extra_path):
    env = dict(os.environ)
    if extra_path is not None:
        parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        if extra_path not in parts:
            env["PYTHONPATH"] = os.pathsep.join([extra_path] + parts)
    env["MPLBACKEND"] = "Agg"  # headless; %matplotlib inline still works
    env.pop("PYTEST_CURRENT_TEST", None)
    return env


@pytest.fixture(scope="module")
def kernel_spec_dir(tmp_path_factory):
    """A kernel spec ("pykfac-test") that starts ipykernel in this interpreter."""
    pytest.importorskip("ipykernel")
    d = tmp_path_factory.mktemp("kernels")
    spec = d / "pykfac-test"
    spec.mkdir()
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "pykfac test kernel",
        "language": "python",
    }))
    return str(d)


@pytest.mark.skipif(not NOTEBOOKS, reason="no notebooks in notebooks/")
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, kernel_spec_dir, tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("matplotlib")
    from jupyter_client import AsyncKernelManager
    from jupyter_client.kernelspec import KernelSpecManager

    extra_path, pykfac_init = _pykfac_location()
    nb = nbformat.read(str(path), as_version=4)
    # Fail early and clearly if the kernel would import another pykfac.
    check = nbformat.v4.new_code_cell(
        "import os as _os, pykfac as _pk\n"
        f"assert _os.path.abspath(_pk.__file__) == {pykfac_init!r}, "
        "f'kernel imports {_pk.__file__}, the tests use ' + "
        f"{pykfac_init!r}\n"
        "del _os, _pk")
    nb.cells.insert(0, check)

    km = AsyncKernelManager(
        kernel_name="pykfac-test",
        kernel_spec_manager=KernelSpecManager(kernel_dirs=[kernel_spec_dir]))
    client = nbclient.NotebookClient(
        nb, km=km, timeout=CELL_TIMEOUT, startup_timeout=120,
        resources={"metadata": {"path": str(tmp_path)}})
    error = None
    try:
        # cleanup_kc: shut the kernel down afterwards although we made its manager.
        client.execute(cleanup_kc=True, env=_kernel_env(extra_path), cwd=str(tmp_path))
    except nbclient.exceptions.CellExecutionError as exc:
        error = _ANSI.sub("", str(exc))  # IPython colours its tracebacks
    if error is not None:
        pytest.fail(f"{path.name}: a cell raised\n{error}", pytrace=False)
