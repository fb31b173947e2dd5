"""`python -m refsav ...` runs the `refsav` command."""
import sys

from refsav.cli import main

sys.exit(main())
