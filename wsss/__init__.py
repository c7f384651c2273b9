"""hpa-wsss: weakly-supervised Puzzle-CAM cell classification for the Human Protein Atlas."""

import os as _os

# albumentations looks for a newer release online at import; this project runs with no network.
_os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"
