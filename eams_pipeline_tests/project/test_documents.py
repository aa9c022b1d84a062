"""The documents: the README is the front door and docs/ holds the rest. Every path, link
and anchor that README.md and docs/*.md name exists in the checkout, every document of
docs/ is linked from the README, the README stays short with the demo's tour on its first
screen, and no document names an issue number (it says what the thing is).

The extractor is tested on its own documents first, so that a made-up path fails."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from eams_pipeline.core.names import DISTRICT_DIRS
from eams_pipeline_tests.spec import SPEC_DIR

REPO = Path(__file__).resolve().parents[2]
README_MAX_LINES = 260
TOUR_WITHIN_LINES = 40  # one screen

# The first folder of a path that documents name but the checkout does not hold.
NOT_IN_CHECKOUT = {
    "var": "the demo's state, created by scripts/demo (git-ignored)",
    **{folder: "a district's SFTP folder" for folder in DISTRICT_DIRS},
}
# Files that documents name by their full name and that are made at run time.
MADE_AT_RUN_TIME = {
    "deploy/eams.env": "the operator's copy of deploy/eams.env.example",
    "students.csv": "the district's upload",
}
CONTRACT_FILES = {"SPEC.md", "students-template.csv", "transitions.csv", "setup-example.yaml"}
CONTRACT_PREFIX = "../shared/spec/"
FILE_SUFFIXES = (".py", ".md", ".sql", ".yaml", ".yml", ".toml", ".csv", ".json", ".txt", ".sh")
# a bare name with one of these is a file of the project (a data file's name, e.g. a
# misnamed upload `students_0114.csv`, is an example, not a file of the checkout)
PROJECT_SUFFIXES = (".py", ".md", ".sql", ".yaml", ".yml", ".toml", ".sh")
# a code span holding one of these is a command, a value, a pattern or a URL, not a path
NOT_A_PATH = re.compile(r"[\s<>*?\[\]{}$=|,;:@'\"()!`]")
MODULE = re.compile(r"^(eams_pipeline|eams_pipeline_tests|bench)(\.[A-Za-z_]\w*)+$")
CODE_SPAN = re.compile(r"(`+)(.+?)(?<!`)\1(?!`)", re.DOTALL)
LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
ISSUE_NUMBER = re.compile(r"issue\s*#?\s*\d+", re.IGNORECASE)
SKIPPED_DIRS = {".git", ".venv", "var", "__pycache__", "node_modules", ".ruff_cache"}


@dataclass(frozen=True)
class Reference:
    document: Path
    line: int
    written: str  # as the document has it
    kind: str  # "path" (a code span), "link" (a Markdown link)

    def where(self, repo: Path) -> str:
        return f"{self.document.relative_to(repo)}:{self.line}: {self.written!r}"


@dataclass(frozen=True)
class Check:
    """What a reference must satisfy: ``path`` exists (relative to the checkout), or
    ``contract`` exists in the contract's folder, or ``name`` is some file's name in the
    checkout; ``anchor`` (a heading's slug) is in the Markdown file ``path``."""

    path: str | None = None
    contract: str | None = None
    name: str | None = None
    anchor: str | None = None


# -- reading a Markdown document -----------------------------------------------------------


def prose(text: str) -> str:
    """The text without its code blocks (fenced, or indented after a blank line): their lines
    are blanked, so line numbers stay those of the document."""
    out: list[str] = []
    fence: str | None = None
    indented = False
    previous_blank = True
    for line in text.split("\n"):
        stripped = line.lstrip()
        if fence is not None:
            out.append("")
            if stripped.startswith(fence):
                fence = None
            continue
        if stripped.startswith(("```", "~~~")):
            fence = stripped[:3]
            out.append("")
            continue
        blank = not stripped
        if not blank and (line.startswith(("    ", "\t")) and (previous_blank or indented)):
            indented = True
            out.append("")
            continue
        if not blank:
            indented = False
        previous_blank = blank
        out.append(line)
    return "\n".join(out)


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def references(document: Path, text: str) -> list[Reference]:
    """Every code span and every Markdown link target of ``text`` outside code blocks."""
    body = prose(text)
    found = [
        Reference(document, _line_of(body, m.start()), m.group(2).strip(), "path")
        for m in CODE_SPAN.finditer(body)
    ]
    without_code = CODE_SPAN.sub(lambda m: " " * len(m.group(0)), body)
    found += [
        Reference(document, _line_of(without_code, m.start()), m.group(1), "link")
        for m in LINK.finditer(without_code)
    ]
    return sorted(found, key=lambda r: r.line)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """The anchors of a document's headings (a repeated one gets -1, -2, ... as on GitHub)."""
    seen: dict[str, int] = {}
    out = set()
    for line in prose(text).split("\n"):
        m = HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        out.add(base if count == 0 else f"{base}-{count}")
    return out


# -- what a reference must satisfy ---------------------------------------------------------


def check_of(reference: Reference, repo: Path) -> Check | None:
    """What ``reference`` must satisfy, or None when it names no file of the checkout (a
    command line, a value, a URL, a glob, a Dagster tag, a runtime or SFTP path)."""
    if reference.kind == "link":
        return _check_of_link(reference, repo)
    token = reference.written
    if token.startswith(CONTRACT_PREFIX) or token == CONTRACT_PREFIX.rstrip("/"):
        rest = token[len(CONTRACT_PREFIX) :]  # "": the contract's folder itself
        return None if NOT_A_PATH.search(rest) else Check(contract=rest)
    if NOT_A_PATH.search(token) or "://" in token or token.startswith(("/", "~", "-")):
        return None
    token = token.removeprefix("./")
    if token in MADE_AT_RUN_TIME or not token:
        return None
    if "/" in token:
        first = token.split("/", 1)[0]
        if first in NOT_IN_CHECKOUT:
            return None
        if (repo / first).is_dir() or token.endswith("/") or token.endswith(FILE_SUFFIXES):
            return Check(path=token.rstrip("/"))
        return None  # e.g. a Dagster tag `eams/district`, a shard `i/n`
    if MODULE.match(token):
        return Check(path=token.replace(".", "/"))  # a module: a .py file or a package
    if token in CONTRACT_FILES:
        return Check(contract=token)
    if token.endswith(PROJECT_SUFFIXES) and not token.startswith("."):
        return Check(name=token)
    return None


def _check_of_link(reference: Reference, repo: Path) -> Check | None:
    target = reference.written
    if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, https:, mailto:
        return None
    path, _, anchor = target.partition("#")
    if not path:
        return Check(path=str(reference.document.relative_to(repo)), anchor=anchor or None)
    resolved = Path(os.path.normpath(reference.document.parent / path))
    try:
        inside = resolved.relative_to(repo)
    except ValueError:
        contract_root = Path(os.path.normpath(repo.parent / "shared" / "spec"))
        try:
            return Check(contract=str(resolved.relative_to(contract_root)))
        except ValueError:
            return Check(path=str(resolved))  # outside the checkout: reported as missing
    return Check(path=str(inside), anchor=anchor or None)


def _names_in(repo: Path) -> set[str]:
    names: set[str] = set()
    for _root, dirs, files in os.walk(repo):
        dirs[:] = [d for d in dirs if d not in SKIPPED_DIRS and not d.endswith(".egg-info")]
        names.update(files)
    return names


def problems(
    refs: Iterable[Reference], repo: Path, *, contract_dir: Path | None = None
) -> Iterator[str]:
    """What is wrong with ``refs``: a missing path, file name or anchor. Contract files are
    checked only when ``contract_dir`` is given."""
    names: set[str] | None = None
    for ref in refs:
        check = check_of(ref, repo)
        if check is None:
            continue
        if check.contract is not None:
            if contract_dir is not None and not (contract_dir / check.contract).exists():
                yield f"{ref.where(repo)}: not in the contract's folder {contract_dir}"
            continue
        if check.name is not None:
            names = names if names is not None else _names_in(repo)
            if check.name not in names:
                yield f"{ref.where(repo)}: no file of that name in the checkout"
            continue
        assert check.path is not None
        target = repo / check.path
        if not (target.exists() or target.with_suffix(".py").is_file()):
            yield f"{ref.where(repo)}: {check.path} does not exist"
            continue
        if (
            check.anchor
            and target.suffix == ".md"
            and check.anchor not in anchors(target.read_text(encoding="utf-8"))
        ):
            yield f"{ref.where(repo)}: no heading #{check.anchor} in {check.path}"


def documents(repo: Path) -> list[Path]:
    return [repo / "README.md", *sorted((repo / "docs").glob("*.md"))]


def all_references(repo: Path) -> list[Reference]:
    return [r for d in documents(repo) for r in references(d, d.read_text(encoding="utf-8"))]


# -- the extractor, on documents made for it -----------------------------------------------


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "checkout"
    for path in ("eams_pipeline/core/transitions.py", "sql/001_master_data.sql",
                 "bench/RESULTS.md", "eams_pipeline_tests/project/test_x.py"):  # fmt: skip
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text("x\n")
    (root / "docs").mkdir()
    (root / "docs" / "operating.md").write_text("# Operating\n\n## The file: students.csv\n")
    return root


def _problems_of(repo: Path, text: str, name: str = "README.md", **kw: Path) -> list[str]:
    document = repo / name
    document.write_text(text)
    return list(problems(references(document, text), repo, **kw))


def test_a_made_up_path_is_reported_with_its_line(repo: Path) -> None:
    text = (
        "# T\n\nThe matrix: `eams_pipeline/core/transitions.py`.\n"
        "And `eams_pipeline/core/nowhere.py`.\n"
    )
    assert _problems_of(repo, text) == [
        "README.md:4: 'eams_pipeline/core/nowhere.py': eams_pipeline/core/nowhere.py does not exist"
    ]


def test_made_up_folders_files_links_and_anchors_are_reported(repo: Path) -> None:
    text = (
        "`sql/` `bench/RESULTS.md` `docs/operating.md` exist; `nowhere/x.py` and `madeup/` and\n"
        "`test_missing.py` and `eams_pipeline.core.gone` do not. See [ops](docs/operating.md),\n"
        "[the file](docs/operating.md#the-file-studentscsv), [gone](docs/gone.md),\n"
        "[bad anchor](docs/operating.md#no-such-heading) and [here](#t).\n\n# T\n"
    )
    found = _problems_of(repo, text)
    assert [p.split(": ", 1)[1] for p in found] == [
        "'nowhere/x.py': nowhere/x.py does not exist",
        "'madeup/': madeup does not exist",
        "'test_missing.py': no file of that name in the checkout",
        "'eams_pipeline.core.gone': eams_pipeline/core/gone does not exist",
        "'docs/gone.md': docs/gone.md does not exist",
        "'docs/operating.md#no-such-heading': no heading #no-such-heading in docs/operating.md",
    ]


def test_links_in_docs_resolve_from_the_document_folder(repo: Path) -> None:
    text = "[ops](operating.md#operating) [readme](../README.md) [x](../docs/x.md)\n"
    (repo / "README.md").write_text("# R\n")
    found = _problems_of(repo, text, name="docs/cli.md")
    assert found == ["docs/cli.md:1: '../docs/x.md': docs/x.md does not exist"]


def test_commands_urls_globs_tags_and_runtime_paths_are_not_paths(repo: Path) -> None:
    text = (
        "`eams process --district D001 nowhere.csv` `https://example.org/a/nowhere.py`\n"
        "[site](https://example.org/nowhere.md) `var/demo/mail/*.eml` `var/demo/secrets.json`\n"
        "`*.filepart` `eams/district` `eams/reprocess=<run id>` `i/n` `A/D/X/I` `incoming/`\n"
        "`errors/students_errors_<upload id>.csv` `/run/secrets/eams` `students.csv`\n"
        "`deploy/eams.env` `key: value` ``a ` b`` http://127.0.0.1:3000\n\n"
        "```yaml\nsee: `eams_pipeline/nowhere.py`\n```\n\n"
        "    eams setup load `eams_pipeline/nowhere_either.py`\n"
    )
    assert _problems_of(repo, text) == []


def test_contract_paths_are_checked_only_against_a_contract_folder(repo: Path) -> None:
    text = "`../shared/spec` `../shared/spec/SPEC.md` `../shared/spec/NOPE.md` `transitions.csv`\n"
    assert _problems_of(repo, text) == []  # no contract folder given: not checked
    contract = repo.parent / "contract"
    contract.mkdir()
    (contract / "SPEC.md").write_text("x")
    found = _problems_of(repo, text, contract_dir=contract)
    assert [p.split(": ")[1] for p in found] == ["'../shared/spec/NOPE.md'", "'transitions.csv'"]


def test_code_blocks_keep_line_numbers_and_hide_their_content() -> None:
    text = "a\n\n    `x/y.py`\n    more\n\nb `z.py`\n   ```\n`w.py`\n   ```\n"
    refs = references(Path("/r/README.md"), text)
    assert [(r.line, r.written) for r in refs] == [(6, "z.py")]


def test_slugs_follow_github() -> None:
    assert slug("The file: students.csv") == "the-file-studentscsv"
    assert slug("Safe uploads: the change guard, full roster") == (
        "safe-uploads-the-change-guard-full-roster"
    )
    assert slug("Stray (misnamed) files") == "stray-misnamed-files"
    assert anchors("# A\n## A\n```\n# B\n```\n") == {"a", "a-1"}


# -- the project's documents ---------------------------------------------------------------


def test_every_path_link_and_anchor_the_documents_name_exists() -> None:
    found = list(problems(all_references(REPO), REPO))
    assert not found, "stale references in the documents:\n" + "\n".join(found)


def test_the_contract_paths_exist_in_the_contract() -> None:
    if not SPEC_DIR.is_dir():
        pytest.skip(
            f"the contract is not in {SPEC_DIR}: the documents' `../shared/spec/...` paths are "
            "not checked (set EAMS_SPEC_DIR to the contract's folder)"
        )
    named = [r for r in all_references(REPO) if (c := check_of(r, REPO)) and c.contract]
    assert named, "the documents name no file of the contract"
    found = list(problems(named, REPO, contract_dir=SPEC_DIR))
    assert not found, "\n".join(found)


def test_the_extractor_finds_what_the_documents_name() -> None:
    written = {r.written for r in all_references(REPO)}
    # a few that must be there: if these are not found, the extractor has gone blind
    assert {"eams_pipeline/core/transitions.py", "bench/RESULTS.md", "docs/districts.md"} <= written


def test_every_document_in_docs_is_linked_from_the_readme() -> None:
    readme = REPO / "README.md"
    linked = {
        check.path
        for ref in references(readme, readme.read_text(encoding="utf-8"))
        if ref.kind == "link" and (check := check_of(ref, REPO)) is not None and check.path
    }
    unlinked = [
        str(d.relative_to(REPO))
        for d in sorted((REPO / "docs").glob("*.md"))
        if str(d.relative_to(REPO)) not in linked
    ]
    assert not unlinked, f"documents the README does not link: {unlinked}"


def test_the_readme_is_short_and_its_tour_is_on_the_first_screen() -> None:
    lines = (REPO / "README.md").read_text(encoding="utf-8").split("\n")
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines"
    tour = [i for i, line in enumerate(lines, 1) if line.startswith("## ") and "tour" in line]
    assert tour and tour[0] <= TOUR_WITHIN_LINES, f"the demo's tour starts at line {tour}"


def test_no_document_names_an_issue_number() -> None:
    named = [
        f"{d.relative_to(REPO)}:{i}: {line.strip()}"
        for d in [*documents(REPO), REPO / "bench" / "RESULTS.md"]
        for i, line in enumerate(d.read_text(encoding="utf-8").split("\n"), 1)
        if ISSUE_NUMBER.search(line)
    ]
    assert not named, "say what the thing is, not its issue number:\n" + "\n".join(named)
