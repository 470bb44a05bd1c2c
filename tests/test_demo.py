"""``python -m pykfac`` (pykfac/__main__.py) and its demo (pykfac/demo.py).

The command line is run as a user runs it: ``sys.executable -m pykfac ...`` in
a subprocess, from a fresh temporary directory, with this process's
environment (PYTHONPATH, e.g. ``PYTHONPATH=/tmp/x/lib`` from
``tools/devbuild.sh``; the directory pykfac was imported from is added when it
is not a site-packages directory). The demo runs three times (about 5 s
each): with --out, with the default output path (the same numbers again), and
without matplotlib. The many argument and --out checks call
``pykfac.__main__.main(argv)`` in process (one of each also runs as a
subprocess).
"""
import os
import re
import site
import struct
import subprocess
import sys

import numpy as np
import pytest

TIMEOUT = 300  # seconds per command; the demo takes a few
METHODS = ("MAP", "diag", "kron", "last-layer")
# hide matplotlib from the subprocess, then run pykfac's __main__ as -m would
NO_MATPLOTLIB = ("import sys; sys.modules['matplotlib'] = None; import runpy; "
                 "runpy.run_module('pykfac', run_name='__main__', alter_sys=True)")


def _env():
    import pykfac

    env = dict(os.environ)
    parent = os.path.dirname(os.path.dirname(os.path.abspath(pykfac.__file__)))
    site_dirs = {os.path.realpath(d) for d in list(site.getsitepackages()) + [site.getusersitepackages()]}
    if os.path.realpath(parent) not in site_dirs:
        parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join([parent] + [p for p in parts if p != parent])
    env.pop("PYTEST_CURRENT_TEST", None)
    env.pop("MPLBACKEND", None)  # the demo must not need it
    return env


def cli(*args, cwd, no_matplotlib=False):
    """Run ``python -m pykfac ARGS`` in ``cwd``; the CompletedProcess (text)."""
    head = [sys.executable, "-c", NO_MATPLOTLIB] if no_matplotlib else [sys.executable, "-m", "pykfac"]
    return subprocess.run(head + [str(a) for a in args], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=TIMEOUT)


def parse_table(stdout):
    """{method: {column: value}} from the demo's table (numbers as float, '—' as None)."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("method "))
    header = re.split(r" {2,}", lines[start].strip())
    assert set(lines[start + 1].replace(" ", "")) == {"-"}, "a rule under the header"
    rows = {}
    for line in lines[start + 2:start + 2 + len(METHODS)]:
        cells = re.split(r" {2,}", line.strip())
        assert len(cells) == len(header), line
        row = dict(zip(header, cells))
        for key in header[1:]:
            row[key] = None if row[key] == "—" else float(row[key].replace(",", ""))
        rows[row["method"]] = row
    return rows


def png_size(path):
    """(width, height) from the IHDR chunk, after checking the PNG signature."""
    with open(path, "rb") as f:
        head = f.read(33)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    length, kind = struct.unpack(">I4s", head[8:16])
    assert kind == b"IHDR" and length == 13
    return struct.unpack(">II", head[16:24])


def has_traceback(proc):
    return "Traceback" in proc.stdout or "Traceback" in proc.stderr


# ---- the demo ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    """One demo run with --out (and progress bars on): (process, png path, cwd)."""
    cwd = tmp_path_factory.mktemp("demo_cwd")
    out = tmp_path_factory.mktemp("demo_out") / "x.png"
    proc = cli("demo", "--out", out, cwd=cwd)
    return proc, out, cwd


def test_demo_runs_and_prints_table(demo_out):
    proc, out, cwd = demo_out
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not has_traceback(proc)
    rows = parse_table(proc.stdout)
    assert list(rows) == list(METHODS)
    for name, row in rows.items():
        assert 0.75 < row["accuracy"] <= 1.0, (name, row)      # chance is 1/3
        assert 0.0 < row["NLL"] < np.log(3), (name, row)          # better than uniform
        assert 0.0 <= row["ECE"] <= 1.0
        assert 1 / 3 <= row["OOD conf."] <= 1.0
        assert row["time [s]"] >= 0.0
        assert (row["prior prec."] is None) == (name == "MAP")
        if name != "MAP":
            assert row["prior prec."] > 0
            # the point of Laplace: less confident far from the data than the MAP
            assert row["OOD conf."] < rows["MAP"]["OOD conf."], (name, row)
    assert rows["diag"]["params"] == rows["kron"]["params"] == rows["MAP"]["params"]
    assert rows["last-layer"]["params"] < rows["MAP"]["params"]
    # the sentence under the table repeats the OOD numbers in percent
    pct = {r: round(100 * rows[r]["OOD conf."]) for r in METHODS}
    summary = " ".join(proc.stdout.split())
    assert f"the MAP is {pct['MAP']}% confident" in summary
    for name in METHODS[1:]:
        assert f"{pct[name]}% ({name})" in summary
    # and the agreement it claims is a real percentage
    agree = float(re.search(r"on at least ([0-9.]+)% of the test points", summary).group(1))
    assert 90.0 <= agree <= 100.0


def test_demo_writes_png(demo_out):
    proc, out, cwd = demo_out
    assert proc.returncode == 0, proc.stderr[-3000:]
    from pykfac import demo

    assert out.is_file()
    assert png_size(out) == (round(demo.FIGSIZE[0] * demo.DPI), round(demo.FIGSIZE[1] * demo.DPI))
    assert str(out.resolve()) in proc.stdout
    assert not (cwd / demo.DEFAULT_OUT).exists(), "--out given: nothing in the working directory"
    mpimg = pytest.importorskip("matplotlib.image")
    pixels = mpimg.imread(out)
    # not a blank canvas: the colour map spans many colours
    assert len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)) > 1000


def test_demo_progress_bar_on_stderr(demo_out):
    proc = demo_out[0]
    assert "K-FAC training:" in proc.stderr      # tqdm's "desc: 42%|..." format
    assert "K-FAC training:" not in proc.stdout


def test_demo_default_out_and_determinism(demo_out, tmp_path):
    proc = cli("demo", "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not has_traceback(proc)
    png = tmp_path / "pykfac_demo.png"
    assert png.is_file() and png_size(png)[0] > 0
    assert str(png.resolve()) in proc.stdout
    assert "K-FAC training:" not in proc.stderr   # --no-progress
    # the same default seed: the same numbers as the first run, timings aside
    first, again = parse_table(demo_out[0].stdout), parse_table(proc.stdout)
    for name in METHODS:
        first[name].pop("time [s]")
        again[name].pop("time [s]")
        assert again[name] == first[name]


def test_demo_without_matplotlib(tmp_path):
    proc = cli("demo", "--no-progress", cwd=tmp_path, no_matplotlib=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not has_traceback(proc)
    assert "matplotlib is not installed: skipped the PNG (pip install matplotlib)" in proc.stdout
    assert list(parse_table(proc.stdout)) == list(METHODS)
    assert list(tmp_path.iterdir()) == []


# ---- help and errors ----------------------------------------------------------------
def test_help(tmp_path):
    proc = cli("--help", cwd=tmp_path)
    assert proc.returncode == 0
    assert proc.stdout.startswith("usage: python -m pykfac")
    for word in ("demo", "config", "K-FAC", "Laplace", "python -m pykfac demo"):
        assert word in proc.stdout


def test_demo_help(tmp_path):
    proc = cli("demo", "--help", cwd=tmp_path)
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    for word in ("--out", "--seed", "--no-progress", "K-FAC", "pk.Laplace", "diag", "kron",
                 "last-layer", "NLL", "ECE", "PNG", "matplotlib", "seconds", "spirals"):
        assert word in text, word
    from pykfac import demo

    assert f"{round(demo.FIGSIZE[0] * demo.DPI)} x {round(demo.FIGSIZE[1] * demo.DPI)} PNG" in text
    assert list(tmp_path.iterdir()) == []


def test_no_command_is_a_usage_error(tmp_path):
    proc = cli(cwd=tmp_path)
    assert proc.returncode == 2
    assert "usage:" in proc.stderr and "demo" in proc.stderr and "error:" in proc.stderr
    assert proc.stdout == "" and not has_traceback(proc)


def run_main(argv, capsys):
    """``pykfac.__main__.main(argv)`` in this process: (exit status, stdout, stderr).

    Faster than a subprocess for the many argument checks; the subprocess
    tests above and below cover the real ``python -m pykfac`` entry."""
    from pykfac.__main__ import main

    try:
        status = main([str(a) for a in argv])
    except SystemExit as exc:   # argparse's usage errors and --help
        status = exc.code
    out, err = capsys.readouterr()
    return status, out, err


BAD_ARGUMENTS = [
    (["frobnicate"], "invalid choice"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["demo", "--bogus"], "unrecognized arguments: --bogus"),
    (["demo", "extra"], "unrecognized arguments: extra"),
    (["demo", "--seed", "x"], "--seed"),
    (["demo", "--seed", "-1"], "--seed"),
    (["demo", "--seed", "1.5"], "--seed"),
    (["demo", "--seed", str(2 ** 32)], "--seed"),
    (["demo", "--seed"], "--seed"),
    (["demo", "--out"], "--out"),
    (["config", "--seed", "1"], "unrecognized arguments"),
]


@pytest.mark.parametrize("args, message", BAD_ARGUMENTS)
def test_bad_arguments_are_usage_errors(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    status, out, err = run_main(args, capsys)
    assert status == 2, (out, err)
    assert "usage:" in err and message in err
    assert out == ""                              # nothing ran
    assert list(tmp_path.iterdir()) == []


def test_bad_argument_in_a_subprocess(tmp_path):
    proc = cli("demo", "--seed", "x", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("usage: python -m pykfac demo")
    assert "error: argument --seed" in proc.stderr
    assert proc.stdout == "" and not has_traceback(proc)


def test_demo_subcommand_errors_show_its_own_usage(capsys):
    status, out, err = run_main(["demo", "--bogus"], capsys)
    assert status == 2 and err.startswith("usage: python -m pykfac demo")


def _bad_outs(tmp_path):
    a_file = tmp_path / "a_file.txt"
    a_file.write_text("not a directory")
    (tmp_path / "a_dir").mkdir()
    return {
        "missing directory": (tmp_path / "no" / "such" / "dir" / "x.png", "does not exist"),
        "a directory": (tmp_path / "a_dir", "is a directory"),
        "parent is a file": (a_file / "x.png", "is not a directory"),
        "not .png": (tmp_path / "x.jpg", ".png"),
        "empty": ("", "empty path"),
        # open() fails even for root: ENAMETOOLONG
        "name too long": (tmp_path / ("x" * 300 + ".png"), "cannot write"),
    }


@pytest.mark.parametrize("case", ["missing directory", "a directory", "parent is a file", "not .png",
                                  "empty", "name too long"])
def test_unwritable_out_fails_fast(tmp_path, monkeypatch, capsys, case):
    pytest.importorskip("matplotlib")   # without it --out is not used, hence not checked
    out, message = _bad_outs(tmp_path)[case]
    before = sorted(tmp_path.rglob("*"))
    monkeypatch.chdir(tmp_path)
    status, stdout, stderr = run_main(["demo", "--out", out], capsys)
    assert status == 1, (stdout, stderr)
    err = stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("python -m pykfac demo: error: --out"), err
    assert message in err[0]
    assert stdout == ""   # checked before the demo printed (or computed) anything
    assert sorted(tmp_path.rglob("*")) == before


def test_unwritable_out_in_a_subprocess(tmp_path):
    proc = cli("demo", "--out", tmp_path / "no" / "x.png", cwd=tmp_path)
    assert proc.returncode == 1
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0]
    assert proc.stdout == "" and not has_traceback(proc)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root may write into read-only directories")
def test_read_only_directory_fails_fast(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        proc = cli("demo", "--out", ro / "x.png", cwd=tmp_path)
    finally:
        ro.chmod(0o700)
    assert proc.returncode == 1
    assert "cannot write" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert proc.stdout == "" and not has_traceback(proc)


def test_closed_stdout_is_not_a_traceback(tmp_path):
    """``python -m pykfac demo | head -1``: the reader goes away; exit 1 quietly."""
    proc = subprocess.Popen([sys.executable, "-m", "pykfac", "demo", "--no-progress"], cwd=tmp_path,
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()          # before the demo's first line is written
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=TIMEOUT) == 1
    assert "Traceback" not in err and "Broken pipe" not in err, err


def test_config_and_version(tmp_path):
    import pykfac

    proc = cli("config", cwd=tmp_path)
    assert proc.returncode == 0 and "blas_library" in proc.stdout and pykfac.__version__ in proc.stdout
    proc = cli("--version", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == f"pykfac {pykfac.__version__}"


# ---- pieces, in process --------------------------------------------------------------
def test_check_out_leaves_files_alone(tmp_path):
    from pykfac import demo

    existing = tmp_path / "old.png"
    existing.write_bytes(b"keep me")
    assert demo.check_out(existing) == str(existing.resolve())
    assert existing.read_bytes() == b"keep me"
    new = tmp_path / "new.PNG"
    assert demo.check_out(new) == str(new.resolve())
    assert not new.exists(), "the probe file is removed again"
    with pytest.raises(demo.DemoError, match="does not exist"):
        demo.check_out(tmp_path / "nope" / "x.png")


def test_make_spirals():
    from pykfac import demo

    X, y = demo.make_spirals(50, n_classes=4, noise=0.0, rng=1)
    assert X.shape == (200, 2) and X.dtype == np.float64 and y.dtype == np.int64
    assert np.array_equal(np.bincount(y), [50] * 4)
    r = np.hypot(X[:, 0], X[:, 1])
    assert r.max() <= 3.0 and r.min() >= 3.0 * np.sqrt(0.02) - 1e-12   # r = 3 sqrt(u), u in [0.02, 1)
    # without noise each arm is the curve phi = 4 r / 3 + 2 pi c / C
    phi = np.arctan2(X[:, 1], X[:, 0])
    expected = 4.0 * r / 3.0 + 2.0 * np.pi * y / 4
    assert np.allclose(np.angle(np.exp(1j * (phi - expected))), 0.0, atol=1e-12)
    X2, y2 = demo.make_spirals(50, n_classes=4, noise=0.0, rng=1)
    assert np.array_equal(X, X2) and np.array_equal(y, y2)
    X3, _ = demo.make_spirals(50, n_classes=4, noise=0.0, rng=2)
    assert not np.array_equal(X, X3)
