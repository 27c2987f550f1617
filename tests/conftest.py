import sys
from pathlib import Path

# Let tests import their helpers (mmaction_ref, doubles) as plain modules.
sys.path.insert(0, str(Path(__file__).resolve().parent))
