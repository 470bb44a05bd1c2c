"""Build pykfac's C extension.

BLAS/LAPACK selection (override with PYKFAC_BLAS=system|scipy-openblas):
  1. the system OpenBLAS when `pkg-config openblas` finds one;
  2. otherwise OpenBLAS from the `scipy-openblas32` wheel (a build requirement).
     Its shared library is copied next to the extension and found through an
     $ORIGIN rpath, so pykfac never imports scipy_openblas32 at run time.

PYKFAC_SANITIZE=address,undefined builds with those sanitizers (tests then need
LD_PRELOAD of the ASan runtime; see .ci/run).
"""
import glob
import os
import shutil
import subprocess
import sys

import numpy
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))


def _pkg_config(*args):
    try:
        out = subprocess.run(["pkg-config", *args], check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.split()


def blas_config():
    choice = os.environ.get("PYKFAC_BLAS", "").strip().lower()
    if choice in ("", "system") and _pkg_config("--exists", "openblas") is not None:
        cflags = _pkg_config("--cflags", "openblas") or []
        libs = _pkg_config("--libs", "openblas") or []
        return dict(
            include_dirs=[f[2:] for f in cflags if f.startswith("-I")],
            library_dirs=[f[2:] for f in libs if f.startswith("-L")],
            libraries=[f[2:] for f in libs if f.startswith("-l")],
            prefix="",
            source="system openblas (pkg-config)",
            bundle=None,
        )
    if choice == "system":
        sys.exit("PYKFAC_BLAS=system but pkg-config finds no openblas")
    import scipy_openblas32 as sob

    libdir = sob.get_lib_dir()
    return dict(
        include_dirs=[sob.get_include_dir()],
        library_dirs=[libdir],
        libraries=[sob.get_library()],
        prefix="scipy_",
        source="scipy-openblas32 " + sob.__version__ + " (bundled)",
        bundle=os.path.join(libdir, sob.get_library(fullname=True)),
    )


BLAS = blas_config()

sanitize = os.environ.get("PYKFAC_SANITIZE", "").strip()
extra_compile = ["-std=c11", "-O3", "-Wall", "-Wextra", "-Wno-unused-parameter",
                 "-Wno-missing-field-initializers", "-fno-math-errno",
                 # selects in the activation kernels vectorise only without FP traps
                 "-fno-trapping-math"]
extra_link = []
if sanitize:
    flags = ["-fsanitize=" + sanitize, "-fno-omit-frame-pointer", "-g"]
    extra_compile = [f for f in extra_compile if f != "-O3"] + ["-O1"] + flags
    extra_link += flags
if BLAS["bundle"]:
    extra_link.append("-Wl,-rpath," + ("@loader_path" if sys.platform == "darwin" else "$ORIGIN"))
else:
    extra_link += ["-Wl,-rpath," + d for d in BLAS["library_dirs"]]

csrc = sorted(glob.glob(os.path.join("csrc", "*.c")))
wrapper = sorted(glob.glob(os.path.join("pykfac", "_core*.c")))

ext = Extension(
    "pykfac._core",
    sources=wrapper + csrc,
    include_dirs=["csrc", numpy.get_include()] + BLAS["include_dirs"],
    library_dirs=BLAS["library_dirs"],
    libraries=BLAS["libraries"] + ["m"],
    define_macros=[
        ("PK_BLAS_PREFIX", BLAS["prefix"] or "PK_EMPTY"),
        ("PK_BLAS_SOURCE", '"' + BLAS["source"] + '"'),
        # One build runs on NumPy 1.23+ and 2.x (built against 2.x headers).
        ("NPY_TARGET_VERSION", "NPY_1_23_API_VERSION"),
        ("NPY_NO_DEPRECATED_API", "NPY_1_23_API_VERSION"),
    ],
    extra_compile_args=extra_compile,
    extra_link_args=extra_link,
)


class BuildExt(build_ext):
    def build_extension(self, ext):
        super().build_extension(ext)
        if BLAS["bundle"]:
            target_dir = os.path.dirname(self.get_ext_fullpath(ext.name))
            os.makedirs(target_dir, exist_ok=True)
            shutil.copy2(BLAS["bundle"], os.path.join(target_dir, os.path.basename(BLAS["bundle"])))


setup(
    ext_modules=[ext],
    cmdclass={"build_ext": BuildExt},
    package_data={"pykfac": ["*.so", "*.dylib"]},
)
