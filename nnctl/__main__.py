"""`python -m nnctl` runs the CLI."""
from nnctl.cli import app

app(prog_name="nnctl")
