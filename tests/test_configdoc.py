import dataclasses
import subprocess
import sys
from dataclasses import dataclass

from huginn_db.configdoc import field_docs
from tests.conftest import ROOT


@dataclass
class Base:
    """Not a field's doc."""

    width: int = 4
    """Columns."""
    depth: int = 2
    plain = 3
    """After a plain assignment: no field, no doc."""
    name: str = "x"
    """First line.

        Indented second paragraph (the common indent is removed).
    """


@dataclass
class Child(Base):
    width: int = 8
    """Columns, doubled."""
    extra: bool = False
    """Only here."""


class Outer:
    @dataclass
    class Inner:
        k: int = 1
        """Nested and indented."""


def test_field_docs_reads_attribute_docstrings():
    assert field_docs(Base) == {
        "width": "Columns.",
        "name": "First line.\n\nIndented second paragraph (the common indent is removed).",
    }
    assert "depth" not in field_docs(Base)  # undocumented: absent
    assert field_docs(Outer.Inner) == {"k": "Nested and indented."}


def test_field_docs_follows_the_mro():
    assert field_docs(Child) == {"width": "Columns, doubled.", "name": field_docs(Base)["name"], "extra": "Only here."}


def test_field_docs_of_a_class_without_source():
    assert field_docs(dataclasses.make_dataclass("Made", [("a", int)])) == {}
    assert field_docs(int) == {}


def test_configdoc_imports_without_torch():
    code = "import sys, huginn_db.configdoc; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
