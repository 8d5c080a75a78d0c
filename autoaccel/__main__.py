"""``python -m autoaccel COMMAND``: see ``autoaccel.cli``."""

from autoaccel.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
