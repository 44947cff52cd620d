"""`python -m companion.train`: runs the command line, companion.train_cli.

Example: python -m companion.train --preset shakespeare-char-cpu --out runs/cpu
"""
from companion.train_cli import main

raise SystemExit(main())
