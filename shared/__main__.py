"""``python -m shared`` is the ``dzone`` command (useful before the console script is installed)."""

from shared.cli import main

main()
