"""Compile fedgate's routing kernels ahead of time into ``fedgate.routing._kernels_aot``.

``setup.py`` runs this after the Cython extensions. The kernels are the Numba
functions of ``fedgate/routing/_kernels.py``, unchanged: Numba's ``pycc`` compiles
them here for exactly the argument types the router passes (the dtypes of
``NodeArrays``) into an extension module that needs only NumPy at run time, so
a gateway process never loads Numba and LLVM (~70 MB of its memory) nor pays
a compile at start. Without this module fedgate compiles the same kernels just
in time (see ``fedgate/routing/kernels.py``).

Usage: ``python _native/build_kernels_aot.py OUTPUT_PATH``

``FEDGATE_AOT_CPU`` names the CPU to generate code for: ``host`` (the default,
as the just-in-time compile does) or e.g. ``generic`` for a build that must
run on other machines.
"""

from __future__ import annotations

import os
import sys
import types
import warnings
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "fedgate"
EXPORTS = (("score", "_score_kernel"), ("components", "_components_kernel"))


def _kernels_module() -> types.ModuleType:
    # The packages' __init__ files import the whole library (pyzmq, msgspec, …)
    # or the compiled core, which the build environment does not have: stand in
    # for the packages and import only the kernels and what they read (NumPy,
    # Numba, the codes).
    for name in ("fedgate", "fedgate._core", "fedgate.routing"):
        path = PACKAGE.parent.joinpath(*name.split("."))
        package = types.ModuleType(name)
        package.__path__ = [str(path)]
        sys.modules[name] = package
    from fedgate.routing import _kernels

    return _kernels


def build(output: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pycc is "pending deprecation" in Numba
        from numba import int64, typeof
        from numba.pycc import CC, compiler

    kernels = _kernels_module()
    # pycc compiles with default flags, where the just-in-time kernels get
    # fedgate's (fedgate/routing/_jit.py: JIT_OPTIONS). The one that changes the code is
    # the error model: Python's tests every float division for zero, which
    # keeps LLVM from vectorising the score loop (measured 4× slower).
    from fedgate.routing._jit import JIT_OPTIONS as options

    class KernelFlags(compiler.Flags):  # type: ignore[misc]
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)
            self.error_model = options["error_model"]
            self.boundscheck = options["boundscheck"]
            self.fastmath = options["fastmath"]

    compiler.Flags = KernelFlags

    cc = CC(output.name.split(".")[0])
    cc.output_dir = str(output.parent)
    cc.output_file = output.name
    cc.target_cpu = os.environ.get("FEDGATE_AOT_CPU", "host")
    examples = {"score": kernels._warm_examples(components=False)[0],
                "components": kernels._warm_examples(components=True)[0]}  # fmt: skip
    for exported, name in EXPORTS:
        dispatcher = getattr(kernels, name)
        signature = int64(*(typeof(arg) for arg in examples[exported]))
        cc.export(exported, signature)(dispatcher.py_func)
    cc.compile()


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    output = Path(argv[1]).resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    build(output)
    print(f"fedgate: routing kernels compiled ahead of time into {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
