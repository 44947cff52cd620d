"""Entry point: python -m companion.serve --checkpoint PATH --port N."""
import sys

from .cli import main

sys.exit(main())
