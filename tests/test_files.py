"""agegate.files: a replaced file is the old one or the new one, never half, and no debris stays."""

from __future__ import annotations

import stat

import pytest

from agegate.files import replacing, write_atomically


def test_write_replaces_the_whole_file_with_its_mode(tmp_path):
    target = tmp_path / "state.json"
    target.write_text("old")
    write_atomically(target, '{"new": true}\n')
    assert target.read_text() == '{"new": true}\n'
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_a_writer_that_fails_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "crops.npz"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with replacing(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("the writer died")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crops.npz"]


def test_the_temporary_keeps_the_suffix_writers_insist_on(tmp_path):
    with replacing(tmp_path / "sub" / "epoch-001.keras") as tmp:
        assert tmp.suffix == ".keras" and tmp.parent == tmp_path / "sub"
        tmp.write_bytes(b"model")
    assert (tmp_path / "sub" / "epoch-001.keras").read_bytes() == b"model"
