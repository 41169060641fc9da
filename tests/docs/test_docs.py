"""The documents a newcomer reads are in the repository, and what the code says about them holds.

* Every mention of a specification document (the math, design, experiments or style page) in a source or
  Markdown file names a file that exists, relative to the repository root or to the mentioning file.
* Every relative Markdown link resolves, and a link to ``page.md#anchor`` finds that anchor on the page.
* Every equation tag the code cites (``[M2]``, ``[A3]``, ...) has its own section in docs/math.md: a
  heading that starts with the tag and an explicit ``<a id="TAG"></a>`` anchor.
* Test files and test functions are named after their subject, never after an issue number.
"""
import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MATH = ROOT / "docs/math.md"

SOURCE_SUFFIXES = {".py", ".md", ".sh", ".cu"}
SKIP_PARTS = {"__pycache__", "node_modules", "build", "dist"}
# Directories whose files cite equation tags (the library, the fast kernels, the scripts, tests, benchmarks, docs).
TAG_DIRS = ("mesa_ref", "mesa_fast", "scripts", "tests", "benchmarks", "docs")

# A path-like word ending in one of the spec documents' names (the math, design, experiments or style page, in
# either case), with or without a directory part; see test_spec_reference_check_rejects_a_missing_file.
# The look-behind keeps URLs ("https://host/x/design.md") out: the match cannot start after '/', '.', '-' or a
# word character.
SPEC_REF = re.compile(r"(?<![\w/.-])((?:[\w.-]+/)*(?:math|design|experiments|style)\.md)\b", re.IGNORECASE)
TAG = re.compile(r"\[([A-Z][0-9]+)\]")
LINK = re.compile(r"\]\(([^)\s\\$]+)\)")


def _files(dirs=None, suffixes=SOURCE_SUFFIXES):
    roots = [ROOT / d for d in dirs] if dirs else [ROOT]
    for top in roots:
        if not top.exists():
            continue
        for p in sorted(top.rglob("*")):
            rel = p.relative_to(ROOT).parts
            if any(part.startswith(".") or part in SKIP_PARTS or part.endswith(".egg-info") for part in rel):
                continue
            if p.is_file() and p.suffix in suffixes:
                yield p


def _read(p):
    return p.read_text(encoding="utf-8", errors="replace")


def _line_of(text, pos):
    return text.count("\n", 0, pos) + 1


def _resolves(ref, where):
    return (ROOT / ref).is_file() or (where.parent / ref).is_file()


def _slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    s = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return s.replace(" ", "-")


def _anchors(md_path):
    text = _read(md_path)
    ids = set(re.findall(r'<a\s+(?:id|name)="([^"]+)"', text))
    ids |= {_slug(h) for h in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, flags=re.M)}
    return ids


def _cited_tags():
    cited = {}
    for p in _files(TAG_DIRS):
        text = _read(p)
        for m in TAG.finditer(text):
            cited.setdefault(m.group(1), f"{p.relative_to(ROOT)}:{_line_of(text, m.start())}")
    return cited


# ---------------------------------------------------------------------------------------------- tests


def test_the_spec_documents_exist_in_the_repository():
    for rel in ("docs/math.md", "docs/design.md", "docs/experiments.md", "docs/paper-map.md"):
        assert (ROOT / rel).is_file(), f"{rel} is missing"


def test_every_spec_reference_names_an_existing_file():
    bad = []
    for p in _files():
        text = _read(p)
        for m in SPEC_REF.finditer(text):
            if not _resolves(m.group(1), p):
                bad.append(f"{p.relative_to(ROOT)}:{_line_of(text, m.start())}: {m.group(1)}")
    assert not bad, ("references to a specification document that is not in the repository "
                     "(point them at docs/math.md, docs/design.md or docs/experiments.md):\n  " + "\n  ".join(bad))


def test_spec_reference_check_rejects_a_missing_file(tmp_path):
    # the check above must be able to fail: a bare spec name next to a file resolves only if it is there
    where = tmp_path / "mod.py"
    bare = "MATH" + ".md"                  # spelled in two parts so that this file does not mention it itself
    refs = [m.group(1) for m in SPEC_REF.finditer(f'"""See {bare} and docs/math.md, not https://x.org/a/design.md."""')]
    assert refs == [bare, "docs/math.md"]
    assert not _resolves(bare, where) and _resolves("docs/math.md", where)


def test_relative_markdown_links_resolve():
    bad = []
    for p in _files(suffixes={".md"}):
        text = _read(p)
        for m in LINK.finditer(text):
            target = m.group(1)
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):          # http:, https:, mailto:
                continue
            path, _, frag = target.partition("#")
            dest = p if not path else (p.parent / path)
            where = f"{p.relative_to(ROOT)}:{_line_of(text, m.start())}: {target}"
            if not dest.exists():
                bad.append(where + " (no such file)")
            elif frag and dest.suffix == ".md" and frag not in _anchors(dest):
                bad.append(where + " (no such anchor)")
    assert not bad, "broken relative links:\n  " + "\n  ".join(bad)


def test_math_md_links_the_paper_map():
    assert "(paper-map.md)" in _read(MATH)


def test_every_cited_tag_has_a_section_in_math_md():
    text = _read(MATH)
    cited = _cited_tags()
    assert len(cited) >= 28, f"expected the code to cite the tags of docs/math.md, found only {sorted(cited)}"
    missing_heading = [f"{t} (cited at {w})" for t, w in sorted(cited.items())
                       if not re.search(rf"^#{{2,4}} \[{t}\] \S", text, flags=re.M)]
    missing_anchor = [f"{t} (cited at {w})" for t, w in sorted(cited.items()) if f'<a id="{t}"></a>' not in text]
    assert not missing_heading, "tags without a '### [TAG] title' heading in docs/math.md: " + ", ".join(missing_heading)
    assert not missing_anchor, "tags without an <a id=\"TAG\"></a> anchor in docs/math.md: " + ", ".join(missing_anchor)


def test_every_math_md_section_has_an_equation():
    # a section is the text from one "[TAG]" heading to the next heading of any level
    text = _read(MATH)
    sections = re.split(r"^#{1,4} ", text, flags=re.M)
    tagged = [s for s in sections if TAG.match(s)]
    assert len(tagged) >= 28
    empty = [s.split("\n", 1)[0] for s in tagged if "$" not in s]
    assert not empty, f"sections of docs/math.md without an equation: {empty}"


def test_tests_are_named_by_subject_not_by_issue_number():
    issue = re.compile(r"issue_?\d+|_i\d+(_|$)", re.IGNORECASE)
    bad = [p.name for p in (ROOT / "tests").glob("test_*.py") if issue.search(p.stem)]
    for p in (ROOT / "tests").glob("test_*.py"):
        for node in ast.walk(ast.parse(_read(p))):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and issue.search(node.name):
                bad.append(f"{p.name}::{node.name}")
    assert not bad, f"tests named after an issue number: {bad}"


@pytest.mark.parametrize("heading, slug", [("[M2] The forward recursion (Sherman–Morrison)",
                                            "m2-the-forward-recursion-shermanmorrison"),
                                           ("Loss for the regression tasks", "loss-for-the-regression-tasks")])
def test_slug(heading, slug):
    assert _slug(heading) == slug
