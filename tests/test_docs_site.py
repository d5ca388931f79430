"""The documentation site (mkdocs.yml, docs/) and the README, the front door.

The site is built in strict mode (a broken link, a page missing from the nav, a reference
that does not resolve or a docstring warning fails it); the API pages cover every module;
the Python examples of the README and the guides run; the README stays a front door and
its test command is the one CI runs.
"""

from __future__ import annotations

import importlib.util
import os
import pkgutil
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import jaxbp

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"

needs_mkdocs = pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("mkdocs", "material", "mkdocstrings_handlers.python")),
    reason="the documentation build needs the docs extra: pip install -e '.[docs]' (.[dev] includes it)",
)


def load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------ the strict build


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"), "--site-dir", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    return out, proc, seconds


@pytest.mark.long
@needs_mkdocs
def test_the_site_builds_in_strict_mode_without_a_warning(site):
    out, proc, seconds = site
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-5000:]
    assert not re.search(r"^(WARNING|ERROR)\b", log, re.M), log[-5000:]
    print(f"mkdocs build --strict: {seconds:.1f} s")


@needs_mkdocs
def test_every_page_and_the_files_it_links_to_are_in_the_site(site):
    out, proc, _ = site
    assert proc.returncode == 0
    pages = {p.relative_to(DOCS).with_suffix("").as_posix() for p in DOCS.rglob("*.md") if "_site" not in p.parts}
    for page in pages:
        built = out / ("index.html" if page == "index" else f"{page.removesuffix('/index')}/index.html")
        assert built.is_file(), page
    # the results pages link to the JSON of each run, carried into the site by docs/_site/hooks.py
    speed = (out / "results/speed/index.html").read_text(encoding="utf-8")
    assert 'href="../../experiments/results/throughput.json"' in speed
    assert (out / "experiments/results/throughput.json").is_file()
    assert (out / "examples/custom_layer.py").is_file()


@needs_mkdocs
def test_the_api_pages_render_docstrings_as_markdown_with_links(site):
    """No raw reST roles or directives; roles became links where the name is documented."""
    out, proc, _ = site
    assert proc.returncode == 0
    html = {p: p.read_text(encoding="utf-8") for p in (out / "api").rglob("*.html")}
    for path, text in html.items():
        for raw in (":func:`", ":class:`", ":mod:`", ".. code-block::"):
            assert raw not in text, (path, raw)
    top = html[out / "api/jaxbp/index.html"]
    # jaxbp's docstring says :func:`verify_vjp`: a link to where verify_vjp is documented
    assert re.search(
        r'<a class="autorefs autorefs-internal"[^>]*href="\.\./verify/#jaxbp\.verify\.api\.verify_vjp"', top
    )
    testing = html[out / "api/verify/index.html"]
    assert "from jaxbp.testing import assert_vjp, assert_vjp_shapes" in re.sub(r"<[^>]+>", "", testing)


# ------------------------------------------------------------------ pieces of the build


@needs_mkdocs
def test_links_out_of_docs_are_rewritten_only_for_files_the_site_carries():
    hooks = load(DOCS / "_site/hooks.py", "docs_hooks")
    carried = {"experiments/results/a.json", "examples/x.py"}
    assert (
        hooks.rewrite_link("../experiments/results/a.json", "speed.md", "docs", carried) == "experiments/results/a.json"
    )
    assert hooks.rewrite_link("../../examples/x.py#L3", "results/speed.md", "docs", carried) == "../examples/x.py#L3"
    assert hooks.rewrite_link("../experiments/results/missing.json", "speed.md", "docs", carried) == (
        "../experiments/results/missing.json"  # left as written: the strict build reports it
    )
    assert hooks.rewrite_link("train.md#data-sets", "results/speed.md", "docs", carried) == "train.md#data-sets"
    assert hooks.rewrite_link("https://example.org/a.json", "speed.md", "docs", carried) == "https://example.org/a.json"
    assert "experiments/results/throughput.json" in hooks.carried_files()


@needs_mkdocs
def test_rst_in_docstrings_becomes_markdown():
    import griffe

    ext = load(DOCS / "_site/griffe_rst.py", "griffe_rst")
    module = griffe.load("jaxbp", search_paths=[str(ROOT)], extensions=griffe.load_extensions(ext.RstRoles))
    text = module["verify"].docstring.value
    assert ":func:" not in text and ":mod:" not in text
    assert '<autoref identifier="jaxbp.verify.api.verify_vjp" optional><code>verify_vjp</code></autoref>' in text
    assert "<code>tolerances</code>" in text  # :mod:`~jaxbp.verify.tolerances` shows the last part
    testing = module["testing"].docstring.value
    assert ".. code-block::" not in testing
    assert "```python\nfrom jaxbp.testing import assert_vjp, assert_vjp_shapes\n" in testing
    assert ext.code_blocks("A::\n\n.. code-block:: python\n\n    x = 1\n\n      y\nend") == (
        "A::\n\n```python\nx = 1\n\n  y\n```\n\nend"
    )
    assert ext.to_markdown(module, "reported at trace time)::\n\n    y = x") == "reported at trace time):\n\n    y = x"


def test_every_module_of_the_package_is_on_an_api_page():
    """So the API reference covers every public name: a new module needs a ``::: module`` line."""
    documented = set()
    for page in (DOCS / "api").glob("*.md"):
        documented |= set(re.findall(r"^::: ([\w.]+)\s*$", page.read_text(encoding="utf-8"), re.M))
    modules = {"jaxbp"} | {
        m.name
        for m in pkgutil.walk_packages(jaxbp.__path__, "jaxbp.")
        if not any(part.startswith("_") for part in m.name.split("."))
    }
    assert modules - documented == set(), "add these to a page of docs/api/"
    assert documented - modules == set(), "these pages document modules that no longer exist"


def test_every_page_is_in_the_nav():
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md") if "_site" not in p.parts}
    assert {p for p in pages if p not in nav} == set()


# ------------------------------------------------------------------ the README


def test_the_readme_is_a_front_door_with_the_commands_ci_runs():
    text = README.read_text(encoding="utf-8")
    lines = text.count("\n")
    assert 100 <= lines <= 250, f"README.md has {lines} lines: results and guides belong in docs/"
    setup_and_train = "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/jaxbp train"
    setup_and_test = "python3 -m venv .venv && .venv/bin/pip install -e '.[dev]' && .venv/bin/python -m pytest -n auto"
    assert f"```bash\n{setup_and_train}\n```" in text
    assert f"```bash\n{setup_and_test}\n```" in text
    assert setup_and_test in (ROOT / ".ci/run").read_text(encoding="utf-8").splitlines()
    assert (ROOT / "LICENSE").read_text(encoding="utf-8").split()[:4] == ["Apache", "License", "Version", "2.0,"]


def test_the_readme_links_resolve():
    text = README.read_text(encoding="utf-8")
    targets = [t for t in re.findall(r"\]\(([^)\s#]+)(?:#[^)]*)?\)", text) if "://" not in t]
    assert targets
    assert [t for t in targets if not (ROOT / t).exists()] == []


# ------------------------------------------------------------------ the examples in the text


def python_blocks(path: Path) -> list[str]:
    """The ```python blocks of a page, without those that include a file (examples/ runs those)."""
    blocks = re.findall(r"^```python\n(.*?)^```", path.read_text(encoding="utf-8"), re.M | re.S)
    return [b for b in blocks if "--8<--" not in b]


@pytest.mark.parametrize("page", ["README.md", "docs/getting-started.md", "docs/verify.md", "docs/train.md"])
def test_the_python_examples_of_the_readme_and_the_guides_run(page, tmp_path, monkeypatch, capsys):
    blocks = python_blocks(ROOT / page)
    assert blocks, page
    monkeypatch.chdir(tmp_path)  # what they write (a run folder) goes here
    namespace: dict = {"__name__": "docs_example"}
    for i, block in enumerate(blocks):
        exec(compile(block, f"{page}, python block {i + 1}", "exec"), namespace)
    if page in ("README.md", "docs/verify.md"):
        assert namespace["report"].passed
        assert "PASS" in capsys.readouterr().out
