"""``python -m autoaccel COMMAND``: see ``autoaccel.cli.main``."""

from autoaccel.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
