"""What a worker's start-up skips or defers must not change what it does."""
from importlib import metadata

import pytest

from exekutor.worker import process


def test_entry_points_are_read_once_per_group_during_patching_and_restored_after():
    original = metadata.entry_points
    with process._entry_points_read_once():
        first = metadata.entry_points(group="gevent.plugins.monkey.will_patch_all")
        again = metadata.entry_points(group="gevent.plugins.monkey.will_patch_all")
        other = metadata.entry_points(group="console_scripts")
        assert again is first  # cached, not read again
        assert sorted(ep.name for ep in other) == sorted(ep.name for ep in original(group="console_scripts"))
        assert "exekutor-gevent" in {ep.name for ep in other}  # what the lookup finds is what it always found
    assert metadata.entry_points is original


def test_entry_points_are_restored_when_patching_fails():
    original = metadata.entry_points
    with pytest.raises(KeyboardInterrupt), process._entry_points_read_once():
        raise KeyboardInterrupt
    assert metadata.entry_points is original
