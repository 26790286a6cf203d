"""``python -m dzone`` is the ``dzone`` command (useful before the console script is installed)."""

from dzone.cli import main

main()
