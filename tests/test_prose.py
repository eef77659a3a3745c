"""The chapters' prose speaks to readers: boxes with their titles apart, no word of the book's making."""
import re

import pytest

from moebackdoor import book

CHAPTERS = sorted(book.NOTEBOOKS.glob("*.md"))
# a titled box is `{admonition} Title` with a class; `{note} Title` runs its title into the body
TITLED_PLAIN_BOX = re.compile(r"^(```|:::)\{(note|tip|warning|important|caution|attention|hint)\}[ \t]*\S", re.M)
MAKING = re.compile(r"\bstop \d+\b|\bthis book's (development|history)\b|\bsession\b|\bas of today\b", re.I)


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_boxes_keep_their_titles_apart(path):
    bad = [m.group(0) for m in TITLED_PLAIN_BOX.finditer(path.read_text())]
    assert not bad, f"{path.name}: use ```{{admonition}} Title with :class: note instead of {bad}"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_pages_do_not_speak_of_how_the_book_was_made(path):
    bad = sorted({m.group(0) for m in MAKING.finditer(path.read_text())})
    assert not bad, f"{path.name} speaks of the book's making: {bad}"


def test_the_box_rule_catches_a_run_in_title():
    assert TITLED_PLAIN_BOX.search("text\n```{note} Where it comes from\nbody\n```\n")
    assert not TITLED_PLAIN_BOX.search("```{note}\nbody\n```\n```{admonition} Title\n:class: note\n```\n")
    assert MAKING.search("as measured in stop 17 of this book") and not MAKING.search("the stopping rule")
