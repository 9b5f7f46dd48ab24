"""Where the repository's own files live (the package is installed editable from the repo)."""
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_MANIFEST_DIR = REPO_ROOT / "data"
SPLITS_DIR = DATA_MANIFEST_DIR / "splits"
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
BOOK_DIR = REPO_ROOT / "book"
RESULTS_DIR = REPO_ROOT / "results"
