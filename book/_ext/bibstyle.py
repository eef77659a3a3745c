"""The references page labels each entry as the text cites it (``Chan et al., 2025``), not with a
number, and links arXiv identifiers (``eprint``) and code addresses (``url``): pybtex's ``unsrt``
style with an author-year label style, registered as ``authoryear``."""
from pybtex.plugin import register_plugin
from pybtex.style.formatting.unsrt import Style as UnsrtStyle
from pybtex.style.labels import BaseLabelStyle


def _label(entry) -> str:
    people = entry.persons.get("author") or entry.persons.get("editor") or []
    last = [" ".join(p.prelast_names + p.last_names).replace("{", "").replace("}", "") for p in people]
    names = (last[0] if len(last) == 1 else f"{last[0]} and {last[1]}" if len(last) == 2
             else f"{last[0]} et al." if last else entry.key)
    return f"{names}, {entry.fields.get('year', 'n.d.')}"


class AuthorYearLabels(BaseLabelStyle):
    def format_labels(self, sorted_entries):
        seen = {}
        for entry in sorted_entries:
            label = _label(entry)
            seen[label] = seen.get(label, 0) + 1
            yield label if seen[label] == 1 else f"{label}{'abcdefghij'[seen[label] - 1]}"


class AuthorYearStyle(UnsrtStyle):
    default_label_style = "authoryear"


register_plugin("pybtex.style.labels", "authoryear", AuthorYearLabels)
register_plugin("pybtex.style.formatting", "authoryear", AuthorYearStyle)


def setup(app):
    return {"parallel_read_safe": True, "parallel_write_safe": True}
