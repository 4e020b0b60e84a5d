"""The documentation stays true to the code: the generated reference pages (recipe keys, command line, API) are
current, the README stays short and keeps its two commands, and what the docs include from other files exists.

The site itself is built by `mkdocs build --strict` in CI (.ci/run); the one test here that builds it is skipped
where mkdocs is not installed (`pip install -e ".[docs]"`).
"""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
TWO_COMMANDS = (
    'pip install "torch==2.13.0" -e . && sau-trainer run recipes/demo.yaml --output-dir outputs/demo',
    'pip install "torch==2.13.0" -e ".[test,trl,wmdp,deepspeed]" && python -m pytest',
)


def test_the_generated_reference_pages_match_the_code():
    """docs/reference/{recipe-keys,cli,api}.md are what docs/gen_reference.py makes from the schema, the argument
    parsers and the public names now. Run in a fresh interpreter: a plugin another test registered would add its
    names to the registries the help texts list."""
    proc = subprocess.run([sys.executable, str(DOCS / "gen_reference.py"), "--check"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (
        "docs/gen_reference.py --check failed: the generated docs pages are stale (or the generator broke): "
        "run python docs/gen_reference.py and commit docs/reference/\n" + proc.stderr[-2000:])


def test_the_generator_check_fails_on_a_stale_page(tmp_path, monkeypatch):
    """--check compares what it would write with the committed file, and names the page that differs."""
    sys.path.insert(0, str(DOCS))
    try:
        import gen_reference
    finally:
        sys.path.remove(str(DOCS))
    monkeypatch.setattr(gen_reference, "REFERENCE", tmp_path)
    monkeypatch.setattr(gen_reference, "ROOT", tmp_path)
    monkeypatch.setattr(gen_reference, "PAGES", {"a.md": lambda: "new\n", "b.md": lambda: "same\n"})
    (tmp_path / "a.md").write_text("old\n")
    (tmp_path / "b.md").write_text("same\n")
    assert gen_reference.main(["--check"]) == 1
    assert (tmp_path / "a.md").read_text() == "old\n"  # --check writes nothing
    assert gen_reference.main([]) == 0 and gen_reference.main(["--check"]) == 0


def test_the_recipe_keys_page_lists_every_key_with_its_help():
    from sau_trainer.pipeline.schema import describe_keys

    page = (DOCS / "reference" / "recipe-keys.md").read_text()
    for key, _default, help_text in describe_keys():
        section, _, name = key.rpartition(".")
        assert f"| `{name}` |" in page, f"recipe key {key} is missing from docs/reference/recipe-keys.md"
        assert help_text, f"recipe key {key} has no help text (schema.py: opt(default, help))"
        if section:
            assert f"## `{section}`" in page


def test_the_readme_is_at_most_250_lines_and_keeps_its_two_commands():
    text = README.read_text()
    lines = text.count("\n") + (not text.endswith("\n"))
    assert lines <= 250, f"README.md has {lines} lines (at most 250): move the details into a page under docs/"
    for command in TWO_COMMANDS:
        assert command in text, f"README.md lost one of its two commands: {command}"
    assert "python -m pytest -m slow" in text  # how to run the rest of the suite


def test_what_the_docs_include_from_other_files_exists():
    """Every `--8<-- "FILE"` / `--8<-- "FILE:SECTION"` of a page names a file of the repository and, for a section,
    its start and end markers (a README section moved or renamed would otherwise leave a page empty)."""
    includes = 0
    for page in DOCS.rglob("*.md"):
        for target in re.findall(r'^--8<-- "([^"]+)"', page.read_text(), flags=re.M):
            includes += 1
            path, _, section = target.partition(":")
            assert (ROOT / path).is_file(), f"{page.relative_to(ROOT)} includes {path}, which does not exist"
            if section and not section.isdigit():
                text = (ROOT / path).read_text()
                for end in ("start", "end"):
                    assert f"--8<-- [{end}:{section}]" in text, (
                        f"{page.relative_to(ROOT)} includes section {section!r} of {path}, which lacks its {end} marker")
    assert includes >= 4  # the README's quick start and features, CONTRIBUTING.md, CHANGELOG.md, the plugin file


def test_the_plugins_page_shows_the_tested_plugin_file():
    """The plugin example of the docs is tests/plugins/my_plugin.py itself (tests/test_plugins.py runs it)."""
    page = (DOCS / "guides" / "plugins.md").read_text()
    assert re.search(r'^--8<-- "tests/plugins/my_plugin\.py(:\d+)?"$', page, flags=re.M)


@pytest.mark.slow
def test_the_site_builds_strictly(tmp_path):
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip('mkdocs is not installed (pip install -e ".[docs]")')
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (tmp_path / "site" / "reference" / "recipe-keys" / "index.html").is_file()


def test_the_files_the_docs_name_exist():
    """A path of the repository that README.md or a docs page names (a test that shows a number, a benchmark script,
    a recipe, a module) exists, and so does every test file named by its bare name: a file renamed without its
    mention would leave the docs pointing at nothing."""
    pages = [README, *sorted(DOCS.rglob("*.md"))]
    test_files = {p.name for p in (ROOT / "tests").rglob("test_*.py")}
    missing = []
    for page in pages:
        text = page.read_text()
        for path in re.findall(r"(?<![\w/.-])((?:tests|benchmarks|recipes|sau_trainer|docs)/[\w./-]+\.(?:py|yaml|md))",
                               text):
            if not (ROOT / path).exists():
                missing.append(f"{page.relative_to(ROOT)}: {path}")
        for name in re.findall(r"(?<![\w/])(test_[\w*]+\.py)", text):
            if not any(Path(n).match(name) for n in test_files):
                missing.append(f"{page.relative_to(ROOT)}: {name}")
    assert not missing, "the docs name files that do not exist:\n" + "\n".join(sorted(set(missing)))
