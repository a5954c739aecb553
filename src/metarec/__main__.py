"""`python -m metarec` is the `metarec` command."""

from metarec.cli import app

app()
