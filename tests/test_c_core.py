"""Run the C tests of csrc/ (tests/c/run.sh) so that pytest -- and CI -- covers them.

The runner compiles every tests/c/test_*.c with all of csrc/*.c under
``-std=c11 -Wall -Wextra -Werror`` against OpenBLAS and runs each program:
plainly, under ASan/UBSan (SANITIZE=1) and under valgrind (VALGRIND=1), the
last two whenever the tools work here.
"""
import os
import re
import shutil
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
RUN_SH = os.path.join(HERE, "c", "run.sh")
REPO = os.path.dirname(HERE)


def _compiler():
    cc = os.environ.get("CC", "cc")
    return shutil.which(cc)


pytestmark = [
    pytest.mark.skipif(sys.platform == "win32", reason="tests/c/run.sh needs a POSIX shell"),
    pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed"),
    pytest.mark.skipif(_compiler() is None, reason="no C compiler (set CC) to build tests/c"),
    pytest.mark.skipif(not os.path.isdir(os.path.join(REPO, "csrc")),
                       reason="the C sources (csrc/) are not next to the tests (installed package only)"),
]


def _run(env_extra=None, timeout=900):
    env = dict(os.environ)
    env.setdefault("PYTHON", sys.executable)
    env.update(env_extra or {})
    return subprocess.run(["bash", RUN_SH], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _check(proc):
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"tests/c/run.sh failed (exit {proc.returncode}):\n{out}"
    summaries = re.findall(r"^(\w+): (\d+) passed, (\d+) failed$", proc.stdout, flags=re.M)
    assert summaries, f"no test program reported a summary:\n{out}"
    for name, passed, failed in summaries:
        assert int(failed) == 0, f"{name}: {failed} C tests failed:\n{out}"
        assert int(passed) > 0, f"{name} ran no tests:\n{out}"
    return summaries


def test_c_core():
    summaries = _check(_run())
    assert "test_core" in {name for name, _, _ in summaries}


def _sanitizer_works():
    """True if the compiler can build and run an ASan/UBSan program here."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        src, exe = os.path.join(tmp, "probe.c"), os.path.join(tmp, "probe")
        with open(src, "w") as f:
            f.write("#include <stdlib.h>\nint main(void){char *p = malloc(4); free(p); return 0;}\n")
        flags = ["-fsanitize=address,undefined", src, "-o", exe]
        try:
            built = subprocess.run([_compiler(), *flags], capture_output=True, timeout=120)
            return built.returncode == 0 and subprocess.run([exe], capture_output=True, timeout=60).returncode == 0
        except (OSError, subprocess.SubprocessError):
            return False


# Both extra modes are cheap (seconds); they run whenever the tools exist unless
# switched off with PYKFAC_C_SANITIZE=0 / PYKFAC_C_VALGRIND=0.
@pytest.mark.skipif(os.environ.get("PYKFAC_C_SANITIZE") == "0", reason="PYKFAC_C_SANITIZE=0")
def test_c_core_sanitized():
    if not _sanitizer_works():
        pytest.skip("the C compiler cannot build and run -fsanitize=address,undefined programs here")
    _check(_run({"SANITIZE": "1"}))


@pytest.mark.skipif(os.environ.get("PYKFAC_C_VALGRIND") == "0", reason="PYKFAC_C_VALGRIND=0")
@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
def test_c_core_valgrind():
    _check(_run({"VALGRIND": "1"}))
