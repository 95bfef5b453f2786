"""``python -m matseg``: the same command line as the ``matseg`` script."""

from matseg.cli import app

app()
