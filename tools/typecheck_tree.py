"""Lay out the installed import names (changestream_worker, .handlers) as links for mypy.

The repository keeps its worker/ and handlers/ folders and setuptools maps them to one
package at install time; mypy reads files, not import hooks, so it gets the same picture
from a tree of symbolic links under build/typecheck. The README's examples (a handler and
its test) are written there too, so `mypy --strict` checks them as a user would.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TREE = ROOT / "build" / "typecheck"


def main() -> None:
    pkg = TREE / "changestream_worker"
    shutil.rmtree(TREE, ignore_errors=True)
    pkg.mkdir(parents=True)
    for entry in (ROOT / "worker").iterdir():
        if entry.name != "__pycache__":
            (pkg / entry.name).symlink_to(entry)
    (pkg / "handlers").symlink_to(ROOT / "handlers")
    readme = (ROOT / "README.md").read_text()
    for path in re.findall(r"```python\n# ([\w/]+\.py)\b", readme):
        block = re.search(r"```python\n(# " + re.escape(path) + r".*?)```", readme, re.S)
        assert block is not None
        target = TREE / "readme" / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(block.group(1))
    print(TREE)


if __name__ == "__main__":
    main()
