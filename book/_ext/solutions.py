"""Leave out the exercises' solutions when ``moebd_solutions`` is False (``make book SOLUTIONS=no``).

A chapter's solutions are one admonition titled "Solutions"; this removes it from every page
(a course book whose pages go out before the class). A change of the setting re-reads every page.
"""
from docutils import nodes


def _drop_solutions(app, doctree):
    if app.config.moebd_solutions:
        return
    for node in list(doctree.findall(nodes.admonition)):
        titles = [t.astext().strip() for t in node.findall(nodes.title)]
        if titles and titles[0].lower().startswith("solution"):
            node.parent.remove(node)


def setup(app):
    app.add_config_value("moebd_solutions", True, "env")
    app.connect("doctree-read", _drop_solutions)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
