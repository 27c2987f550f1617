"""``python -m harness.sweep`` (harness.sweep.cli)."""

import sys

from harness.sweep.cli import main

sys.exit(main())
