"""A banner at the top of every page not built at ``paper``: the profile it ran at, on what
machine, and what that means for its numbers. It reads the build records that
``python -m moebackdoor.book execute`` writes (``book/generated/builds/<chapter>.json``)."""
import json

from docutils import nodes

MEANING = {
    "smoke": "the test profile: tiny models and data, run in minutes. Its numbers mean nothing; "
             "the page shows only that every step runs.",
    "quick": "scaled down for a 2-core CPU: smaller models, less data, fewer epochs. Its numbers show "
             "trends, not the papers' values; each chapter says where and why they differ.",
}


def _records():
    from moebackdoor import book, paths

    out = {}
    for chapter in book.contents():
        path = paths.builds_dir() / f"{chapter}.json"
        if path.is_file():
            out[chapter] = json.loads(path.read_text())
    return out


def _banner(app, doctree):
    docname = app.env.docname
    if not docname.startswith("chapters/"):
        return
    from moebackdoor import book, machine

    stem, records = docname.split("/", 1)[1], _records()
    if stem in book.SUMMARY_PAGES:
        runs = list(records.values())
        what = "The chapters this page sums up ran"
    else:
        runs = [records[stem]] if stem in records else []
        what = "This page ran"
    profiles = sorted({r["profile"] for r in runs if r.get("profile") and r["profile"] != "paper"})
    if not profiles:
        return
    machines = sorted({machine.text(r["machine"]) for r in runs if r.get("profile") in profiles})
    text = (f"{what} at profile {' and '.join(profiles)}, on {'; '.join(machines)}. "
            + " ".join(f"{p.capitalize()} is {MEANING[p]}" for p in profiles if p in MEANING))
    note = nodes.admonition(classes=["attention", "profile-banner"])
    note += nodes.title(text="Not the papers' scale")
    note += nodes.paragraph(text=text)
    sections = list(doctree.findall(nodes.section))
    if sections:  # under the page's title
        title = sections[0].next_node(nodes.title)
        sections[0].insert(sections[0].index(title) + 1, note)


def setup(app):
    app.connect("doctree-read", _banner)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
