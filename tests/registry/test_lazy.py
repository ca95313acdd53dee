"""Lazy registry entries: a built-in part is known by name before its module is imported, and found on lookup."""

import re
import sys
import textwrap
from pathlib import Path

import pytest

import unimm
from unimm.registry import ALL_REGISTRIES


@pytest.fixture
def widget_modules(tmp_path, monkeypatch):
    """Two modules outside unimm: ``widget_owner`` declares a lazy 'box' in its registry, ``widget_box`` fills it."""
    (tmp_path / "widget_owner.py").write_text(textwrap.dedent("""
        from unimm.registry import Registry

        WIDGETS = Registry("widget")
        WIDGETS.register_lazy("box", "widget_box:Box", aliases=("crate",))
    """))
    (tmp_path / "widget_box.py").write_text(textwrap.dedent("""
        from widget_owner import WIDGETS

        @WIDGETS.register("box", aliases=("crate",))
        class Box:
            '''A box.'''
    """))
    (tmp_path / "widget_impostor.py").write_text(textwrap.dedent("""
        from widget_owner import WIDGETS

        @WIDGETS.register("box")
        class Box:
            '''Not the announced box.'''
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    for name in ("widget_owner", "widget_box", "widget_impostor"):
        sys.modules.pop(name, None)


def test_lazy_entry_is_listed_without_import_and_imported_on_lookup(widget_modules):
    from widget_owner import WIDGETS

    assert WIDGETS.names() == ["box"] and "box" in WIDGETS and "crate" in WIDGETS
    assert "widget_box" not in sys.modules
    box = WIDGETS.get("crate")  # an alias loads the entry too
    assert "widget_box" in sys.modules and box is sys.modules["widget_box"].Box
    assert WIDGETS.get("box") is box and WIDGETS.names() == ["box"]
    assert WIDGETS.describe("box") == "A box."


def test_importing_the_module_directly_fills_the_entry(widget_modules):
    from widget_owner import WIDGETS

    import widget_box

    assert WIDGETS.get("box") is widget_box.Box


def test_another_module_cannot_take_a_lazy_name(widget_modules):
    with pytest.raises(ValueError, match="widget 'box' is registered twice"):
        import widget_impostor  # noqa: F401


def test_a_lazy_entry_whose_module_does_not_register_it_fails_on_lookup(widget_modules):
    from widget_owner import WIDGETS

    WIDGETS.register_lazy("lid", "widget_box:Lid")
    with pytest.raises(RuntimeError, match="importing widget_box did not register widget_box:Lid as 'lid'"):
        WIDGETS.get("lid")


def test_lazy_target_must_name_module_and_attribute():
    from unimm.registry import Registry

    with pytest.raises(ValueError, match="a lazy target looks like .module:attribute., not"):
        Registry("widget").register_lazy("box", "widget_box.Box")


def test_every_built_in_registration_is_declared_lazily():
    """A part registered in the package but not declared in unimm/registry/__init__.py would be found only after
    something imported its module by chance."""
    package = Path(unimm.__file__).parent
    registered = set()
    for path in package.rglob("*.py"):
        registered |= set(re.findall(r"^\s*@?[A-Z]+\.register\(\"(\w+)\"", path.read_text(), re.M))
    declared = {name for registry in ALL_REGISTRIES.values() for name in registry.names()}
    assert registered == declared
    for registry in ALL_REGISTRIES.values():
        registry.load_all()  # each import registers what was announced (else _load raises)
        assert not registry._lazy
        for name in registry.names():
            assert registry.get(name).__module__.startswith("unimm.")
