"""``python -m dcnv3 ...``: see ``dcnv3.cli``."""

from dcnv3.cli import main

main()
