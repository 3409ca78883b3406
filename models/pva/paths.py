"""Where the repository's files are, for the CLIs' defaults (models/tiny, tests/fixtures, examples).

The package is installed editable (`pip install -e models`, scripts/setup-python.sh) or put on
PYTHONPATH (scripts/gpu/python-env.sh), so it always runs from a checkout: the repository root is two
levels above this package.
"""

from __future__ import annotations

from pathlib import Path

#: The checkout's root (the directory holding Cargo.toml, models/, tests/).
REPO_ROOT = Path(__file__).resolve().parents[2]
