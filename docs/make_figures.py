"""Remake the figures that the docs show, by running the pages' own examples.

Run ``make docs-figures``. The python blocks of each page below run in order, in one
namespace, in a temporary folder (as ``tests/test_docs.py`` runs them); the report figures
that the examples wrote are then copied into ``docs/figures/``. A figure in the docs is thus
exactly what its page's example draws with its seeds, and remaking it after a change to the
code shows what the change did.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Python puts this script's folder first on the path, where docs/guides/ would shadow the
# `guides` package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "docs"]

# The parser that tests/test_docs.py runs the pages with (tests/ is not a package).
_spec = importlib.util.spec_from_file_location("test_docs", ROOT / "tests" / "test_docs.py")
_test_docs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_test_docs)
python_blocks = _test_docs.python_blocks

#: page -> {figure written by its examples, relative to the working folder: name in docs/figures}
FIGURES: dict[str, dict[str, str]] = {
    "README.md": {"reports/tour/figures/pair.png": "tour_pair.png"},
    "docs/models/gmm.md": {"reports/gmm/figures/components.png": "gmm_components.png"},
    "docs/models/ppca.md": {
        "reports/ppca/figures/loadings.png": "ppca_loadings.png",
        "reports/ppca/figures/cov_error.png": "ppca_cov_error.png",
    },
}


def run_page(page: Path) -> None:
    namespace: dict[str, object] = {"__name__": "__docs__"}
    for start, code in python_blocks(page.read_text(encoding="utf-8")):
        exec(compile("\n" * start + code, str(page), "exec"), namespace)


def main() -> int:
    target = ROOT / "docs" / "figures"
    target.mkdir(exist_ok=True)
    here = Path.cwd()
    for page, figures in FIGURES.items():
        with tempfile.TemporaryDirectory() as tmp:
            os.chdir(tmp)
            try:
                run_page(ROOT / page)
                for written, name in figures.items():
                    if not Path(written).is_file():
                        print(f"{page}: its examples did not write {written}", file=sys.stderr)
                        return 1
                    shutil.copyfile(written, target / name)
                    print(f"{page}: {written} -> docs/figures/{name}")
            finally:
                os.chdir(here)
    return 0


if __name__ == "__main__":
    sys.exit(main())
