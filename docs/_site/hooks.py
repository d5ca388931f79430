"""MkDocs hooks: the site links to the repository's examples and experiment results.

The pages link to ``../examples/custom_layer.py`` or ``../experiments/results/throughput.json``
as they would on a code host (relative to ``docs/``). These hooks copy ``examples/`` and
``experiments/`` into the site at the same paths and rewrite such links to point there, so the
same link works in both places, and a link to a file that does not exist still fails the
strict build.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

from mkdocs.structure.files import File, Files, InclusionLevel

ROOT = Path(__file__).resolve().parents[2]
# Folders of the repository the site carries, as they are (scripts, JSON, figures).
CARRIED = ("examples", "experiments")
SKIPPED_PARTS = {"__pycache__", ".ipynb_checkpoints"}
LINK = re.compile(r"(\]\()([^)\s]+)((?:\s+\"[^\"]*\")?\))")


def carried_files() -> list[str]:
    """Repository paths (posix, relative to the root) of every file the site carries."""
    found = []
    for top in CARRIED:
        for path in sorted((ROOT / top).rglob("*")):
            rel = path.relative_to(ROOT)
            if path.is_file() and not SKIPPED_PARTS.intersection(rel.parts) and not rel.name.startswith("."):
                found.append(rel.as_posix())
    return found


def on_files(files: Files, config, **kwargs) -> Files:
    for rel in carried_files():
        file = File(
            rel, src_dir=str(ROOT), dest_dir=config["site_dir"], use_directory_urls=config["use_directory_urls"]
        )
        file.inclusion = InclusionLevel.NOT_IN_NAV  # a results table in Markdown is a page, reached by links
        files.append(file)
    return files


def rewrite_link(target: str, page_src_uri: str, docs_dir: str, carried: set[str]) -> str:
    """``target`` as written in the page at ``page_src_uri``; where it leaves ``docs/`` for a carried
    file, the same file's path inside the site; otherwise unchanged."""
    if "://" in target or target.startswith(("#", "/", "mailto:")):
        return target
    path, hash_, anchor = target.partition("#")
    page_dir = posixpath.dirname(page_src_uri)
    in_repo = posixpath.normpath(posixpath.join(docs_dir, page_dir, path))
    if in_repo not in carried:
        return target
    return posixpath.relpath(in_repo, page_dir or ".") + hash_ + anchor


def on_page_markdown(markdown: str, page, config, files: Files, **kwargs) -> str:
    carried = set(carried_files())
    docs_dir = Path(config["docs_dir"]).resolve().relative_to(ROOT).as_posix()
    src_uri = page.file.src_uri
    return LINK.sub(lambda m: m[1] + rewrite_link(m[2], src_uri, docs_dir, carried) + m[3], markdown)
