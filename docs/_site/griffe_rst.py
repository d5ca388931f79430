"""A griffe extension: jaxbp's docstrings, written with Sphinx roles, rendered as Markdown.

The docstrings say ``:func:`verify_vjp```, ``:class:`~jaxbp.train.TrainConfig``` and
``.. code-block:: python``. Without this, the API pages would show them raw. Each role
becomes an optional cross-reference (a link where the name is documented on the site,
plain code where it is not, never a broken link), resolved in the scope of the object
whose docstring it is; a code-block directive becomes a fenced block, and a paragraph's
closing ``::`` (a literal block follows) a single colon.

It also marks the undocumented attributes of classes (the fields of dataclasses and named
tuples) as not public, so the pages leave them out (``filters: public``): the class's
signature lists them with their types and defaults already, and shown again one by one,
without a word each, they bury the documented members.
"""

from __future__ import annotations

import re
import textwrap

import griffe

ROLE = re.compile(r":(?:py:)?(?:func|class|mod|meth|attr|data|exc|obj|const):`(~?)([^`<>]+?)(\(\))?`")
CODE_BLOCK = re.compile(r"^(?P<indent>[ \t]*)\.\. code-block::[ \t]*(?P<lang>[\w+-]*)[ \t]*$")
LITERAL_MARK = re.compile(r"(?<=\S)::[ \t]*$")


def resolve(obj: griffe.Object, name: str) -> str | None:
    """The full path ``name`` stands for in ``obj``'s docstring, followed through imports; None if unknown."""
    name = name.lstrip(".")
    first, _, rest = name.partition(".")
    try:
        path = obj.resolve(first)
    except (griffe.NameResolutionError, AttributeError, KeyError):
        if not name.startswith("jaxbp"):
            return None
        path, rest = name, ""
    full = f"{path}.{rest}" if rest else path
    try:
        target = obj.modules_collection.get_member(full)
        return target.final_target.path if target.is_alias else target.path
    except (KeyError, ValueError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        return full


def role_to_markdown(obj: griffe.Object, match: re.Match) -> str:
    tilde, name, call = match[1], match[2].strip(), match[3] or ""
    title = name.rsplit(".", 1)[-1] if tilde else name.lstrip(".")
    code = f"<code>{title}{call}</code>"
    identifier = resolve(obj, name)
    if identifier is None:
        return code
    return f'<autoref identifier="{identifier}" optional>{code}</autoref>'


def code_blocks(text: str) -> str:
    """``.. code-block:: lang`` and its indented body as a fenced block."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        m = CODE_BLOCK.match(lines[i])
        if not m:
            out.append(lines[i])
            i += 1
            continue
        indent = len(m["indent"].expandtabs())
        body: list[str] = []
        i += 1
        while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
            body.append(lines[i])
            i += 1
        while body and not body[-1].strip():
            body.pop()
        while body and not body[0].strip():
            body.pop(0)
        fence = m["indent"] + "```" + (m["lang"] or "")
        out += [
            fence,
            *(m["indent"] + line for line in textwrap.dedent("\n".join(body)).split("\n")),
            m["indent"] + "```",
            "",
        ]
    return "\n".join(out)


def to_markdown(obj: griffe.Object, text: str) -> str:
    text = code_blocks(text)
    text = "\n".join(LITERAL_MARK.sub(":", line) for line in text.split("\n"))
    return ROLE.sub(lambda m: role_to_markdown(obj, m), text)


class RstRoles(griffe.Extension):
    """Rewrites every docstring of the loaded package once it is loaded (so imports resolve)."""

    def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:
        seen: set[int] = set()

        def visit(obj: griffe.Object) -> None:
            if id(obj) in seen:
                return
            seen.add(id(obj))
            if obj.docstring is not None:
                obj.docstring.value = to_markdown(obj, obj.docstring.value)
            if obj.is_class:
                for member in obj.members.values():
                    if not member.is_alias and member.is_attribute and not member.docstring:
                        member.public = False
            for member in list(obj.members.values()):
                if not member.is_alias:
                    visit(member)

        visit(pkg)
