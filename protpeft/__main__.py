"""``python -m protpeft`` is the ``protpeft`` command."""

from protpeft.cli import main

main()
