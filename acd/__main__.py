"""`python -m acd`: the same as the `acd` command."""

import sys

from acd.cli import main

sys.exit(main())
