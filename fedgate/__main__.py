"""``python -m fedgate …``: the same as the ``fedgate`` command."""

from __future__ import annotations

from fedgate.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
