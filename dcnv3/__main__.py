"""``python -m dcnv3 ...``: see ``dcnv3.cli``."""

from .cli import main

main()
