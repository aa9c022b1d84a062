"""The GraphQL documents the Dagster UI sends, read from the installed dagster-webserver.

The UI's queries are compiled into its JavaScript bundle as template strings
(``gql`...${FRAGMENT}```): each query's text, with the fragments it spreads defined in
other template strings. :func:`ui_documents` reads every ``query``/``fragment`` definition of
the bundle shipped with the installed ``dagster-webserver`` (so the queries match the pinned
version), and :meth:`UiDocuments.document` returns a query with the fragments it needs, as
the UI would send it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

_START = re.compile(r"""\(\[(["'])\\n\s*(?:query|fragment|mutation|subscription) """)
_HEAD = re.compile(r"\s*(query|fragment|mutation|subscription) (\w+)")
_SPREAD = re.compile(r"\.\.\.\s*([A-Za-z_]\w*)")


def _js_string(literal: str) -> str:
    """The value of a JavaScript string literal in double or single quotes."""
    if literal[0] == "'":  # as JSON: an escaped ' is a plain one, a plain " is escaped
        out, i, inner = [], 0, literal[1:-1]
        while i < len(inner):
            c = inner[i]
            if c == "\\" and inner[i + 1] == "'":
                out.append("'")
                i += 2
                continue
            if c == "\\":
                out.append(inner[i : i + 2])
                i += 2
                continue
            out.append('\\"' if c == '"' else c)
            i += 1
        literal = '"' + "".join(out) + '"'
    return json.loads(literal)


def _strings_at(text: str, i: int) -> list[str]:
    """The JavaScript string literals of the array starting at ``text[i] == '['``."""
    parts: list[str] = []
    i += 1
    while True:
        quote = text[i]
        if quote not in "\"'":
            raise ValueError(f"unexpected {text[i : i + 20]!r} in a template array")
        j = i + 1
        while text[j] != quote:
            j += 2 if text[j] == "\\" else 1
        parts.append(_js_string(text[i : j + 1]))
        i = j + 1
        if text[i] == "]":
            return parts
        if text[i] != ",":
            raise ValueError(f"unexpected {text[i : i + 20]!r} in a template array")
        i += 1


def _definitions(body: str) -> list[tuple[str, str, str]]:
    """(kind, name, text) of each top-level definition in a template's text."""
    out: list[tuple[str, str, str]] = []
    depth, start = 0, None
    i = 0
    while i < len(body):
        c = body[i]
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0 and start is not None:
                head = _HEAD.match(body, start)
                assert head is not None
                out.append((head.group(1), head.group(2), body[start : i + 1].strip()))
                start = None
        elif (
            depth == 0
            and start is None
            and _HEAD.match(body, i)
            and (i == 0 or body[i - 1].isspace())
        ):
            start = i
        i += 1
    return out


@dataclass
class UiDocuments:
    definitions: dict[str, tuple[str, str]]  # name -> (kind, text without interpolations)

    def document(self, name: str) -> str:
        """The query ``name`` and every fragment it spreads, transitively."""
        kind, text = self.definitions[name]
        if kind == "fragment":
            raise KeyError(f"{name} is a fragment")
        needed: list[str] = []
        todo = [text]
        while todo:
            for spread in _SPREAD.findall(todo.pop()):
                if spread in needed or spread in ("on",):
                    continue
                if spread not in self.definitions:
                    raise KeyError(f"fragment {spread} of {name} is not in the UI bundle")
                needed.append(spread)
                todo.append(self.definitions[spread][1])
        return "\n".join([text, *(self.definitions[f][1] for f in needed)])


def ui_documents() -> UiDocuments:
    import dagster_webserver

    build = Path(dagster_webserver.__file__).parent / "webapp" / "build" / "_next" / "static"
    found: dict[str, tuple[str, str]] = {}
    for path in sorted(build.rglob("*.js")):
        text = path.read_text(encoding="utf-8", errors="replace")
        for match in _START.finditer(text):
            body = "".join(_strings_at(text, match.start() + 1))
            for kind, name, definition in _definitions(body):
                found.setdefault(name, (kind, definition))
    if not found:
        raise RuntimeError(f"no GraphQL documents found under {build}")
    return UiDocuments(found)
