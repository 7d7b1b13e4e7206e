"""Every reference the book names resolves on its References page.

A chapter cites with MyST roles (``{cite}`key```, ``{cite:p}``, ``{cite:t}``, several keys separated by
commas); ``data/observations/literature.yaml`` names the source of each literature value by a key of
its ``references:`` section. Each of these keys must be an entry of ``book/references.bib``, and the
References page must list it: its ``{bibliography}`` directive lists every entry of the file with
``:all:``, or else only the cited ones. A key missing from the file would render as a broken
citation, or a literature value whose source the reader cannot look up.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
BIB = ROOT / "book" / "references.bib"
REFERENCES_PAGE = ROOT / "book" / "references.md"
LITERATURE = ROOT / "data" / "observations" / "literature.yaml"
CHAPTERS = sorted((ROOT / "notebooks").glob("*.ipynb")) + sorted((ROOT / "book").glob("*.md"))

ENTRY = re.compile(r"^\s*@\s*(\w+)\s*\{\s*([^,\s]+)\s*,", re.M)
CITE = re.compile(r"\{cite(?::[a-z]+)?\}`([^`]*)`")
BIBLIOGRAPHY = re.compile(r"^(```|:::)\{bibliography\}[^\n]*\n(.*?)^\1", re.M | re.S)


def bib_keys(text: str) -> list[str]:
    """The entry keys of a BibTeX file's text (``@comment``, ``@string`` and ``@preamble`` left out)."""
    return [key for kind, key in ENTRY.findall(text) if kind.lower() not in ("comment", "string", "preamble")]


def cited_keys(text: str) -> set[str]:
    """The keys cited by MyST citation roles in ``text``."""
    return {key.strip() for match in CITE.finditer(text) for key in match.group(1).split(",") if key.strip()}


def chapter_text(path: Path) -> str:
    """A chapter's text: a Markdown page, or every cell of a notebook (code cells may write citations too)."""
    if path.suffix == ".ipynb":
        return "\n".join("".join(cell["source"]) for cell in json.loads(path.read_text())["cells"])
    return path.read_text()


def chapter_citations() -> dict[str, set[str]]:
    """Chapter file (relative to the repository) -> the keys it cites."""
    return {str(path.relative_to(ROOT)): keys for path in CHAPTERS if (keys := cited_keys(chapter_text(path)))}


def literature_keys() -> set[str]:
    """The keys of ``literature.yaml``'s ``references:`` section and every key its values name."""
    table = yaml.safe_load(LITERATURE.read_text())
    keys = set(table["references"])
    for source in table["sources"].values():
        if "position_reference" in source:
            keys.add(source["position_reference"])
        keys |= {value["reference"] for value in source.get("values", {}).values()}
    return keys


def unresolved(keys: set[str], bib_text: str) -> set[str]:
    """The keys that are not entries of the BibTeX file's text."""
    return keys - set(bib_keys(bib_text))


def test_the_bib_file_has_no_key_twice():
    keys = bib_keys(BIB.read_text())
    assert len(keys) == len(set(keys)), sorted({key for key in keys if keys.count(key) > 1})


def test_every_cited_key_is_in_the_bib_file():
    bib_text = BIB.read_text()
    missing = {chapter: sorted(unresolved(keys, bib_text)) for chapter, keys in chapter_citations().items()}
    missing = {chapter: keys for chapter, keys in missing.items() if keys}
    assert not missing, f"cited but not in {BIB.relative_to(ROOT)}: {missing}"


def test_every_literature_reference_is_in_the_bib_file():
    table = yaml.safe_load(LITERATURE.read_text())
    named = literature_keys() - set(table["references"])
    assert not named, f"values of {LITERATURE.name} name references that its references: section lacks: {sorted(named)}"
    missing = unresolved(literature_keys(), BIB.read_text())
    assert not missing, f"{LITERATURE.name} references not in {BIB.relative_to(ROOT)}: {sorted(missing)}"


def test_the_references_page_lists_them():
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert str(BIB.relative_to(ROOT)) in config["bibtex_bibfiles"]
    assert "file: book/references" in (ROOT / "_toc.yml").read_text()
    directives = BIBLIOGRAPHY.findall(REFERENCES_PAGE.read_text())
    assert directives, f"{REFERENCES_PAGE.relative_to(ROOT)} has no bibliography directive"
    if not any(re.search(r"^:all:\s*$", options, re.M) for _, options in directives):
        # Without :all: the page lists the cited entries only, so the literature's keys must be cited too.
        cited = set().union(*chapter_citations().values())
        assert not literature_keys() - cited, sorted(literature_keys() - cited)


def test_the_check_catches_a_removed_entry():
    bib_text = BIB.read_text()
    key = "zucker2018"
    assert key in literature_keys() and not unresolved({key}, bib_text)
    start = bib_text.index(f"{{{key},")
    removed = bib_text[: bib_text.rindex("@", 0, start)] + bib_text[bib_text.index("\n}", start) + 2 :]
    assert unresolved({key}, removed) == {key}
    assert cited_keys("as shown {cite:p}`a, b` and {cite:t}`c`; {cite}`d`") == {"a", "b", "c", "d"}


def test_no_two_entries_share_an_author_year_citation():
    """A chapter's citation reads "Tobin et al., 2016" from the entry's authors and year, while the References page
    labels two such entries 2016a and 2016b: a repeated pair must carry its letter in the year, so both agree."""
    from pybtex.database import parse_file

    entries = parse_file(str(BIB)).entries
    cited_as = {}
    for key, entry in entries.items():
        people = entry.persons.get("author") or entry.persons.get("editor") or []
        first = " ".join(people[0].last_names) if people else entry.fields.get("title", key)
        shown = (first, min(len(people), 3), entry.fields.get("year", "n.d."))
        assert shown not in cited_as, f"{key} and {cited_as[shown]} both cite as {shown}: add a, b to their years"
        cited_as[shown] = key
