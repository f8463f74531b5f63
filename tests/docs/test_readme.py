"""The README's code runs as written, and the docs point only at files in this repository.

Every ```python block of README.md runs in its own interpreter (this one: the .venv's). Every line of the
```bash blocks that starts with `specdec` or `python` runs in bash from the repository root with the
interpreter's bin directory first on PATH, as a user with the venv activated would type it. `make` and
`pip install` lines are not run (see SKIPPED_COMMANDS).
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
BIN = Path(sys.executable).parent  # not resolved: the venv's bin, where the `specdec` script is

# Commands that set up or rebuild the environment these tests run in: `make demo`/`make test` run the whole
# suite (this test included) and `pip install -e .` rebuilds the extension under the running tests. They are
# checked only for existing, not run: the make targets by `make -n`, the pip lines not at all.
SKIPPED_COMMANDS = ("make ", "pip install", "FORCE_CUDA=")
# Minutes each, on 2 busy cores: the benchmarks time many shapes and prompts.
SLOW_COMMANDS = ("specdec bench",)
# Python blocks that load the embedded model or decode with it (tens of seconds).
MODEL_SNIPPETS = ("load_model(", "speculative_generate(")


def fenced_blocks(path: Path):
    """(language, code) of each fenced block, in order."""
    return re.findall(r"^```(\w*)\n(.*?)^```", path.read_text(), flags=re.M | re.S)


def shell_lines(code: str):
    """The command lines of a shell block: continuations joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", code)
    for line in joined.splitlines():
        line = re.sub(r"\s+#.*$", "", line).strip()
        if line and not line.startswith("#"):
            yield line


def python_cases():
    blocks = [code for lang, code in fenced_blocks(README) if lang == "python"]
    for i, code in enumerate(blocks):
        marks = [pytest.mark.model] if any(s in code for s in MODEL_SNIPPETS) else []
        yield pytest.param(code, id=f"python-{i}", marks=marks)


def shell_cases():
    for lang, code in fenced_blocks(README):
        if lang not in ("bash", "sh", "shell"):
            continue
        for line in shell_lines(code):
            marks = [pytest.mark.slow] if line.startswith(SLOW_COMMANDS) else []
            yield pytest.param(line, id=line[:60], marks=marks)


def run(args, timeout, **kwargs):
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, **kwargs)


def test_readme_has_code():
    langs = [lang for lang, _ in fenced_blocks(README)]
    assert langs.count("python") >= 3 and langs.count("bash") >= 3, langs


def test_readme_is_a_guide_not_a_log():
    assert len(README.read_text().splitlines()) <= 200


@pytest.mark.parametrize("code", python_cases())
def test_readme_python_block(code):
    result = run([sys.executable, "-c", code], timeout=900)
    assert result.returncode == 0, f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"


@pytest.mark.parametrize("line", shell_cases())
def test_readme_shell_line(line):
    if line.startswith("make "):
        # The target exists and its recipe expands; running it would rebuild and retest everything.
        result = run(["make", "-n", *line.split()[1:]], timeout=60)
        assert result.returncode == 0, result.stderr
        pytest.skip("make targets set up and test the whole project: checked with `make -n` only")
    if line.startswith(SKIPPED_COMMANDS):
        pytest.skip("pip installs rebuild the extension these tests run against: not run here")
    if not line.startswith(("specdec", "python")):
        pytest.skip("only specdec and python command lines are run")
    result = run(["bash", "-c", line], timeout=3600)
    assert result.returncode == 0, f"$ {line}\nstdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"


# ---------------------------------------------------------------- links stay inside the repository
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
OUTSIDE = re.compile(r"DESIGN\.md|DESIGN \d|NOTES\.md|/work/shared|/tmp/plan")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_doc_links_resolve_in_the_repository(doc):
    for target in LINK.findall(doc.read_text()):
        if re.match(r"\w+://", target):
            continue
        assert (doc.parent / target).resolve().exists(), f"{doc.name} links to {target}, which is not in the repository"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_docs_cite_no_outside_document(doc):
    found = OUTSIDE.findall(doc.read_text())
    assert not found, f"{doc.name} refers to {found}"


def test_code_cites_design_sections_that_exist():
    """Comments cite "docs/design.md 3.1"; every such section is a heading of docs/design.md."""
    design = (ROOT / "docs" / "design.md").read_text()
    sections = set(re.findall(r"^#+ (\d+(?:\.\d+)?)\b", design, flags=re.M))
    cited = {}
    for path in [*ROOT.glob("python/**/*.py"), *ROOT.glob("csrc/**/*.*"), *ROOT.glob("tests/**/*.py")]:
        for ref in re.findall(r"docs/design\.md,? ((?:\d+\.\d+|\d+)(?:(?:, | and |-)\d+(?:\.\d+)?)*)", path.read_text(errors="ignore")):
            for number in re.findall(r"\d+(?:\.\d+)?", ref):
                cited.setdefault(number, path.relative_to(ROOT))
    missing = {number: str(where) for number, where in cited.items() if number not in sections}
    assert not missing, f"cited sections missing from docs/design.md: {missing}"


def test_code_cites_notes_topics_that_exist():
    """Comments cite (docs/notes.md, "prompt lookup"); every quoted topic is in docs/notes.md."""
    notes = " ".join((ROOT / "docs" / "notes.md").read_text().lower().split())
    missing = {}
    for path in [*ROOT.glob("python/**/*.py"), *ROOT.glob("csrc/**/*.*")]:
        text = re.sub(r"\s*\n\s*(?:#|//|\*)?\s*", " ", path.read_text(errors="ignore"))  # comments joined
        for quoted in re.findall(r'docs/notes\.md,\s*((?:"[^"]+"(?:\s*(?:and|,)\s*)?)+)', text):
            for topic in re.findall(r'"([^"]+)"', quoted):
                if " ".join(topic.lower().split()) not in notes:
                    missing[topic] = str(path.relative_to(ROOT))
    assert not missing, f"cited topics missing from docs/notes.md: {missing}"
