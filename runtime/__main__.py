"""``python -m edgevae.runtime`` runs the ``edgevae`` CLI."""

from edgevae.runtime.cli import main

main()
