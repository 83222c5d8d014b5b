"""The examples in the library's docstrings run and print what they show."""

import doctest
import importlib
import importlib.util
import pkgutil

import pytest

import det_al

MODULES = sorted(m.name for m in pkgutil.walk_packages(det_al.__path__, "det_al.") if not m.name.endswith("__main__"))


def test_the_walk_finds_the_subpackages():
    assert {"det_al.loop.results", "det_al.scoring.informativeness", "det_al.selection.strategies"} <= set(MODULES)


@pytest.mark.parametrize("name", [m for m in MODULES if ">>>" in (importlib.util.find_spec(m).loader.get_source(m) or "")])
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
