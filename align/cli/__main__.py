"""``python -m align.cli``: the same as the ``align`` console script."""

from align.cli.app import main

main()
