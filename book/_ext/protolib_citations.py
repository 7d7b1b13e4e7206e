"""One citation style for the book: author-year in the text *and* in the reference list.

sphinxcontrib-bibtex's ``author_year`` reference style writes citations in the text as
"(Ulrich, 1976)", but its formatting styles label the reference list with alphabetic keys
("[Ulr76]"), so a reader sees two styles. This Sphinx extension registers a pybtex formatting style,
``protolib_author_year``: the ``unsrt`` entry format, sorted by author and year, with labels
"Ulrich, 1976", "Lynden-Bell and Pringle, 1974", "Terebey et al., 1984", as the text cites them (a, b
suffixes where an author-year pair repeats). Like the citations in the text, an entry with no author is
labelled by its title ("Siamese, 2024"), and one with no year by "n.d.". pybtex has
no such label style built in; it is the documented way to add one (a ``pybtex.style.labels`` plugin).
"""

from __future__ import annotations

from collections import Counter

from pybtex.plugin import register_plugin
from pybtex.richtext import Text
from pybtex.style.formatting.unsrt import Style as UnsrtStyle
from pybtex.style.labels import BaseLabelStyle
from pybtex.style.sorting.author_year_title import SortingStyle


def _authors(entry) -> str:
    people = entry.persons.get("author") or entry.persons.get("editor") or []
    names = [Text.from_latex(" ".join(person.last_names)).render_as("text") for person in people]
    if not names:
        return Text.from_latex(entry.fields.get("title", entry.key)).render_as("text").split(":")[0]
    if len(names) == 1:
        return names[0]
    if names[-1] == "others":  # BibTeX's "and others": "Gieser et al.", as the text cites it, not "Gieser and others"
        return f"{names[0]} et al."
    return f"{names[0]} and {names[1]}" if len(names) == 2 else f"{names[0]} et al."


class AuthorYearLabelStyle(BaseLabelStyle):
    """Labels "Author, Year", "Author and Author, Year", "Author et al., Year"; repeats get a, b, ..."""

    def format_labels(self, sorted_entries):
        entries = list(sorted_entries)
        labels = [f"{_authors(entry)}, {entry.fields.get('year', 'n.d.')}" for entry in entries]
        counts, seen = Counter(labels), Counter()
        for label in labels:
            if counts[label] > 1:
                seen[label] += 1
                label = f"{label}{'abcdefghijklmnopqrstuvwxyz'[seen[label] - 1]}"
            yield label


class AuthorYearSortingStyle(SortingStyle):
    """By author and year; an entry with no author or editor sorts by its title, where its label puts it."""

    def sorting_key(self, entry):
        if entry.persons.get("author") or entry.persons.get("editor"):
            return super().sorting_key(entry)
        return (_authors(entry).lower(), entry.fields.get("year", ""), entry.fields.get("title", ""))


class AuthorYearStyle(UnsrtStyle):
    default_label_style = AuthorYearLabelStyle
    default_sorting_style = AuthorYearSortingStyle


def setup(app):
    register_plugin("pybtex.style.formatting", "protolib_author_year", AuthorYearStyle)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
