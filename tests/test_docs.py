"""The documentation builds, its examples run and its links lead somewhere.

- The site (docs/mkdocs.yml: the pages under docs/pages/ and the API
  reference that mkdocstrings renders from the docstrings) builds with
  `mkdocs build --strict`: a link to a missing page or heading, or a
  docstring griffe cannot parse, fails the build.
- Every ```python block of README.md and of docs/pages/**/*.md runs as a
  test of its own. The blocks of one page run in order in one namespace (a
  block may use the names an earlier one defined), in a temporary working
  directory of that page, in this process (TensorFlow is imported once).
  Shell blocks (```bash, ```sh, plain ```) are not run.
- README.md and lab/README.md (which MkDocs does not see) link only to
  files and headings that exist, and the README fits a screen.

A block that cannot run here (it needs a downloaded file or a GPU) is
marked on the line right before its fence:

    <!-- skip: needs the ImageNet weights of keras.applications -->

and is reported as skipped with that reason. SKIPPED lists every such
mark: a new one must be added there too, so that skips stay few and
deliberate.
"""

import dataclasses
import pathlib
import re
import subprocess
import sys

import keras
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs" / "pages").rglob("*.md"))]
README_MAX_LINES = 250

# (page, reason) of every block marked `<!-- skip: reason -->`.
SKIPPED = {
    ("README.md", "needs weight files downloaded from keras.applications, TF-slim, "
                  "torchvision and timm, and a training run"),
    ("docs/pages/keras-models.md", "needs keras.applications' ImageNet weights (a download) "
                                   "and a 25M-parameter model"),
    ("docs/pages/restoring.md", "needs keras.applications' distributed weight files and a "
                                "TF-slim checkpoint (downloads)"),
}

_FENCE = re.compile(r"^(?P<indent> *)(?P<ticks>`{3,})(?P<info>[^`]*)$")
_SKIP = re.compile(r"^\s*<!--\s*skip:\s*(?P<reason>.*?)\s*-->\s*$")


@dataclasses.dataclass(frozen=True)
class Block:
    page: str  # relative to the repository root
    index: int  # among the page's python blocks, from 0
    line: int  # of the opening fence, from 1
    source: str
    skip: str | None  # the reason, for a block marked to be skipped

    @property
    def id(self):
        first = next((line.strip() for line in self.source.splitlines() if line.strip()), "")
        return f"{self.page}:{self.index}:{first[:40]}"


def python_blocks(path):
    """The ```python blocks of the Markdown file `path`, in order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    page = path.relative_to(ROOT).as_posix()
    blocks, number = [], 0
    while number < len(lines):
        opening = _FENCE.match(lines[number])
        if not opening:
            number += 1
            continue
        indent, ticks = len(opening["indent"]), opening["ticks"]
        end = number + 1
        while end < len(lines) and not re.match(rf"^ *{ticks}\s*$", lines[end]):
            end += 1
        if end == len(lines):
            raise ValueError(f"{page}:{number + 1}: a code fence that is never closed")
        if opening["info"].strip().split(" ")[0] == "python":
            skip = _SKIP.match(lines[number - 1]) if number else None
            source = "\n".join(line[indent:] for line in lines[number + 1 : end])
            blocks.append(
                Block(page, len(blocks), number + 1, source, skip["reason"] if skip else None)
            )
        number = end + 1
    return blocks


BLOCKS = [block for path in PAGES for block in python_blocks(path)]


def test_the_site_builds_without_a_warning(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict",
         "-f", str(ROOT / "docs" / "mkdocs.yml"), "-d", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-6000:]
    for page in ("index.html", "api/layers/index.html", "api/training/index.html"):
        assert (tmp_path / "site" / page).is_file()
    # The API reference is rendered from the docstrings, not left empty.
    api = (tmp_path / "site" / "api" / "layers" / "index.html").read_text(encoding="utf-8")
    assert 'id="normzoo.layers.BatchNorm"' in api and "frozen_stats" in api


def test_every_skipped_example_is_listed_with_its_reason():
    marked = {(block.page, block.skip) for block in BLOCKS if block.skip is not None}
    assert marked == SKIPPED


@pytest.fixture(scope="module")
def namespaces(tmp_path_factory):
    """Per page: the namespace its blocks share, their working directory,
    and the first block that failed."""
    pages = {}

    def of(page):
        if page not in pages:
            directory = tmp_path_factory.mktemp(re.sub(r"\W", "_", page))
            pages[page] = {"namespace": {"__name__": "__main__"}, "cwd": directory, "failed": None}
        return pages[page]

    return of


@pytest.mark.parametrize("block", BLOCKS, ids=[block.id for block in BLOCKS])
def test_python_example_runs_as_written(block, namespaces, monkeypatch):
    if block.skip is not None:
        pytest.skip(f"{block.page}:{block.line}: {block.skip}")
    page = namespaces(block.page)
    if page["failed"] is not None:
        pytest.fail(
            f"{block.page}:{block.line} not run: the block at line {page['failed']} of this "
            f"page failed, and this one may use what that one defines."
        )
    monkeypatch.chdir(page["cwd"])
    # The examples assume Keras' defaults, whatever tests ran before them,
    # and leave them to the tests after them.
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    # Line numbers in a traceback are the Markdown file's.
    code = compile("\n" * block.line + block.source, str(ROOT / block.page), "exec")
    try:
        exec(code, page["namespace"])
    except BaseException:
        page["failed"] = block.line
        raise
    finally:
        keras.config.set_dtype_policy(policy)


# Links in Markdown, [text](target), and images, ![alt](source).
_LINK = re.compile(r"\]\((?P<target>[^)\s]+)\)")


def _github_anchor(heading):
    """The anchor GitHub gives a Markdown heading."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def _anchors(path):
    anchors, seen, fenced = set(), {}, False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (match := re.match(r"^#{1,6} (.*)$", line)):
            anchor = _github_anchor(match[1])
            count = seen.get(anchor, 0)
            seen[anchor] = count + 1
            anchors.add(anchor if count == 0 else f"{anchor}-{count}")
    return anchors


@pytest.mark.parametrize("page", ["README.md", "lab/README.md"])
def test_links_lead_to_files_and_headings_that_exist(page):
    path = ROOT / page
    text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.S | re.M)
    broken = []
    for match in _LINK.finditer(text):
        target = match["target"]
        if re.match(r"^[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        linked = (path.parent / file).resolve() if file else path
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
            broken.append(f"{target}: no such heading in {linked.relative_to(ROOT)}")
    assert not broken, f"{page}: " + "; ".join(broken)


def test_readme_stays_within_250_lines():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines; keep it <= {README_MAX_LINES}: details belong "
        f"in docs/pages/, research in lab/README.md."
    )

