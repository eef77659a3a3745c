"""Load each script once per page.

With Jupyter Book 1.0.4 and Sphinx 7.4 some extensions' scripts reach a page twice (thebe's
settings, the toggle-button selector, MathJax), and a browser then reports
"Identifier ... has already been declared". This keeps the first of each.
"""


def _dedupe(app, pagename, templatename, context, doctree):
    seen, kept = set(), []
    for script in context.get("script_files", []):
        key = getattr(script, "filename", None) or getattr(script, "attributes", {}).get("body") or str(script)
        key = str(key).split("?", 1)[0]
        if key not in seen:
            seen.add(key)
            kept.append(script)
    context["script_files"] = kept


def setup(app):
    app.connect("html-page-context", _dedupe, priority=999)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
