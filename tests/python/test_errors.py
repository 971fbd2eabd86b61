"""Error kinds: the Go core lists them (pybind.ErrorKinds), errors.py maps each to an exception class in one
table, and the two agree exactly; every kind arrives as its class, carrying the kind."""

from __future__ import annotations

import pytest

import splitzip_connector as sz
from splitzip_connector import errors
from splitzip_connector._binding import error_kinds


def test_python_maps_exactly_the_kinds_go_lists():
    go = error_kinds()
    assert len(go) == len(set(go)), f"Go lists a kind twice: {go}"
    assert "corrupt" in go and "busy" in go  # codec and connector kinds, from one list
    missing = sorted(set(go) - set(errors._KINDS))
    extra = sorted(set(errors._KINDS) - set(go))
    assert missing == [], f"kinds Go returns that errors._KINDS does not map: {missing}"
    assert extra == [], f"kinds errors._KINDS maps that Go never returns: {extra}"


@pytest.mark.parametrize("kind", error_kinds())
def test_every_go_kind_translates_to_its_class(kind):
    cls, advice = errors._KINDS[kind]
    assert issubclass(cls, sz.SplitZipError) and cls.__name__ in errors.__all__
    e = errors.translate(RuntimeError(f"[{kind}] splitzip: something"))
    assert type(e) is cls and e.kind == kind
    assert str(e) == "splitzip: something" + advice


def test_unknown_or_missing_kind_is_a_plain_splitzip_error():
    for msg in ("[no_such_kind] splitzip: x", "splitzip: no kind at all"):
        e = errors.translate(RuntimeError(msg))
        assert type(e) is sz.SplitZipError


def test_real_errors_carry_their_kind():
    with pytest.raises(sz.NotAFrameError) as ei:
        sz.decompress(b"\0" * 64)
    assert ei.value.kind == "bad_magic"
    with sz.ControlPlane(storage="memory", namespace="errors") as plane, pytest.raises(sz.SplitZipError) as ei:
        sz.Producer(plane, "")
    assert ei.value.kind == "option"


def test_handoff_exceptions_are_the_errors_modules():
    from splitzip_connector import handoff

    for name in ("HandoffError", "HandoffLayoutError", "HandoffMismatchError", "HandoffUnavailableError",
                 "HandoffBusyError", "ControlPlaneError"):
        assert getattr(handoff, name) is getattr(errors, name) is getattr(sz, name)
