"""``python -m vmd_cli ...`` is the ``vmd`` command (for launchers that take a module)."""

from vmd_cli.main import main

main()
