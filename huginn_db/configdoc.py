"""Attribute docstrings of config dataclasses, read from their source (stdlib only, no torch).

A field is documented by a string literal on the line after it:

    @dataclass
    class ModelConfig:
        hidden: int = 512
        \"\"\"Residual width h.\"\"\"

Python keeps no such string at run time, so `field_docs` parses the class body with `ast`.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import types
import typing

__all__ = ["field_docs", "keys"]


def _own_docs(cls: type) -> dict[str, str]:
    """{field: doc} of the annotated assignments written in `cls`'s own body."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):  # a builtin, or a class made at run time: nothing to read
        return {}
    tree = ast.parse(textwrap.dedent(source))
    node = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls.__name__), None)
    if node is None:
        return {}
    docs = {}
    for stmt, after in zip(node.body, node.body[1:]):
        if (
            isinstance(stmt, ast.AnnAssign)
            and isinstance(stmt.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[stmt.target.id] = inspect.cleandoc(after.value.value)
    return docs


def field_docs(cls: type) -> dict[str, str]:
    """{field name: attribute docstring} of `cls`, inherited fields included (a subclass's doc
    replaces its base's). Undocumented fields are absent, so `set(names) - field_docs(cls).keys()`
    lists them."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is not object:
            docs.update(_own_docs(klass))
    return docs


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return "|".join(map(str, typing.get_args(tp)))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list[{_type_name(typing.get_args(tp)[0])}]"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def keys(cls, prefix: str = "") -> list[tuple[str, str, object, str]]:
    """(dotted key, type, default, doc) of every field of dataclass `cls` and its nested sections,
    in declaration order; a section's row has type "section". `cls.__field_docs__` (a generated
    class cannot carry attribute docstrings) overrides the docstrings read from the source."""
    docs = {**field_docs(cls), **getattr(cls, "__field_docs__", {})}
    hints, out = typing.get_type_hints(cls), []
    default = cls()
    for f in dataclasses.fields(cls):
        key, tp = prefix + f.name, hints[f.name]
        if dataclasses.is_dataclass(tp):
            out.append((key, "section", None, docs.get(f.name, "")))
            out += keys(tp, key + ".")
        else:
            out.append((key, _type_name(tp), getattr(default, f.name), docs.get(f.name, "")))
    return out
