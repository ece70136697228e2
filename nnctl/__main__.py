"""`python -m nnctl` runs the CLI."""
from nnctl.cli import main

main()
