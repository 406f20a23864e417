"""``python -m fedgate.worker …``: the same as ``fedgate worker …``."""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main(prog="python -m fedgate.worker"))
