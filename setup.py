"""Build the compiled core: only the extension list and the Cython directives live here.

Metadata is in pyproject.toml. ``FEDGATE_DEBUG_BUILD=1`` turns bounds and
wraparound checks back on for hunting memory errors.
"""

import os

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

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
        f"fedgate.{name}",
        [f"_native/{name}.pyx"],
        include_dirs=["_native", np.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=CFLAGS,
    )


EXTENSIONS = [ext("_latency"), ext("_breaker_table")]
# Development switch: rebuild one module while another is being edited.
if only := os.environ.get("FEDGATE_BUILD_ONLY"):
    EXTENSIONS = [e for e in EXTENSIONS if e.name == f"fedgate.{only}"]

print(f"fedgate: building the accelerated core ({'debug' if DEBUG else 'release'} directives)")

setup(ext_modules=cythonize(EXTENSIONS, compiler_directives=DIRECTIVES, annotate=False))
