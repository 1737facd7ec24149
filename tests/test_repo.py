"""The repo stands on its own: no file points at notes outside it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Built from parts so that this file does not match itself.
OUTSIDE = re.compile("|".join([r"\.\./" + "shared", "DESIGN" + r"\.md", "RECIPES" + r"\.md"]))


def test_no_file_refers_to_a_file_outside_the_repo():
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    hits = []
    for name in files:
        path = ROOT / name
        if not path.is_file() or path.suffix in {".lock", ".png", ".parquet", ".bz2"}:
            continue
        text = path.read_text(errors="ignore")
        hits += [f"{name}:{text.count(chr(10), 0, m.start()) + 1}: {m.group()}" for m in OUTSIDE.finditer(text)]
    assert not hits, "files refer to notes outside the repo:\n" + "\n".join(hits)


def test_the_readme_links_the_security_page():
    assert "docs/security.md" in (ROOT / "README.md").read_text()
    assert (ROOT / "docs" / "security.md").is_file()
