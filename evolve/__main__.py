"""`python -m evolve`."""

from evolve.cli import main

main()
