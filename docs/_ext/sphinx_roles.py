"""A Griffe extension for the API reference: vsekit's docstrings are Google-style with Sphinx cross-reference
roles (``:func:`load```, ``:class:`~vsekit.data.Vocabulary```) and reST literals (````x````, a paragraph ending
in ``::``), which Markdown would show as written. Each role becomes inline code of its target (the last part
after ``~``), and a final ``::`` a colon; the code is left alone."""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:func|class|meth|attr|data|mod|exc|obj|const|term|ref):`(~?)([^`]+)`")
LITERAL_BLOCK = re.compile(r"(?<=\S)::$", re.MULTILINE)


def _role(match: re.Match[str]) -> str:
    tilde, target = match.groups()
    target = target.strip()
    if tilde:
        target = target.rsplit(".", 1)[-1]
    return f"``{target}``"


def rewrite(text: str) -> str:
    """The docstring ``text`` with its Sphinx roles as inline code and ``::`` paragraph ends as colons."""
    return LITERAL_BLOCK.sub(":", ROLE.sub(_role, text))


class SphinxRoles(griffe.Extension):
    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rewrite(obj.docstring.value)

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        # on_object visits the members only: the top-level package's own docstring comes here
        self.on_object(obj=pkg)
