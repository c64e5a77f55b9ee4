"""The public names: only semcache/__init__.py exports, through a sorted __all__."""

from __future__ import annotations

import semcache


def test_all_is_sorted_and_complete():
    names = [n for n in semcache.__all__ if n != "__version__"]
    assert names == sorted(names, key=lambda n: (not n.isupper(), n))
    for name in semcache.__all__:
        assert hasattr(semcache, name), name


def test_public_members_are_exported():
    public = {n for n in dir(semcache) if not n.startswith("_")}
    modules = {n for n in public if type(getattr(semcache, n)).__name__ == "module"}
    assert public - modules - {"annotations"} <= set(semcache.__all__)
