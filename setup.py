"""Build the compiled core: only the extension list and the Cython directives live here.

Metadata is in pyproject.toml. ``FEDGATE_DEBUG_BUILD=1`` turns bounds and
wraparound checks back on for hunting memory errors. After the Cython modules,
the routing kernels are compiled ahead of time by Numba
(``_native/build_kernels_aot.py``); when that fails the build goes on and
fedgate compiles them just in time instead (it says so), so
``FEDGATE_NO_AOT=1`` skips it.
"""

import os
import subprocess
import sys

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

DEBUG = os.environ.get("FEDGATE_DEBUG_BUILD") == "1"

DIRECTIVES = {
    "language_level": "3",
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": not DEBUG,
    "nonecheck": False,
    "embedsignature": True,
}

# C11 atomics need -std=c11; -O3 lets gcc inline the tiny header functions.
CFLAGS = ["-std=c11", "-O0" if DEBUG else "-O3", "-g0" if not DEBUG else "-g"]


def ext(name: str) -> Extension:
    return Extension(
        f"fedgate._core.{name}",
        [f"_native/{name}.pyx"],
        include_dirs=["_native", np.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=CFLAGS,
    )


EXTENSIONS = [ext("_latency"), ext("_breaker_table")]
# Development switch: rebuild one module while another is being edited.
ONLY = os.environ.get("FEDGATE_BUILD_ONLY")
if ONLY:
    EXTENSIONS = [e for e in EXTENSIONS if e.name == f"fedgate._core.{ONLY}"]
AOT = os.environ.get("FEDGATE_NO_AOT") != "1" and ONLY in (None, "", "_kernels_aot")


class BuildExt(build_ext):
    """The Cython modules, then ``fedgate.routing._kernels_aot`` from the Numba kernels."""

    def run(self) -> None:
        super().run()
        if not AOT:
            return
        # In a process of its own: compiling imports Numba and LLVM, which this
        # build process need not hold, and a failure must not end the build.
        target = self.get_ext_fullpath("fedgate.routing._kernels_aot")
        done = subprocess.run([sys.executable, "_native/build_kernels_aot.py", target])
        if done.returncode:
            print(
                "fedgate: WARNING: the routing kernels were not compiled ahead of time; "
                "fedgate will compile them just in time (Numba) in each gateway process",
                file=sys.stderr,
            )

print(f"fedgate: building the accelerated core ({'debug' if DEBUG else 'release'} directives)")

setup(
    ext_modules=cythonize(EXTENSIONS, compiler_directives=DIRECTIVES, annotate=False),
    cmdclass={"build_ext": BuildExt},
)
