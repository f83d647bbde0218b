"""``python -m edgevae.training`` runs the training CLI."""

from edgevae.training.cli import main

main()
