"""Atomic writes that no planted symlink can redirect, and a full disk as one line."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from convvae.errors import exit_on_error
from convvae.runtime.files import atomic_path, write_json


def test_a_planted_temporary_name_cannot_redirect_the_write(tmp_path: Path) -> None:
    # The temporary name was .<name>.<pid>.tmp: anyone who could write the folder could plant
    # a symlink there and have the next write overwrite the file it points to.
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    target = tmp_path / "out" / "metrics.json"
    target.parent.mkdir()
    for pid in {os.getpid(), *range(os.getpid() - 2, os.getpid() + 3)}:
        (target.parent / f".metrics.json.{pid}.tmp").symlink_to(victim)
    write_json({"a": 1}, target)
    assert victim.read_text() == "keep me"
    assert target.read_text() == '{\n  "a": 1\n}\n' and not target.is_symlink()
    # The file gets a plain new file's permissions, not the temporary's 0600.
    umask = os.umask(0o022)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_failed_write_leaves_neither_the_file_nor_a_temporary(tmp_path: Path) -> None:
    target = tmp_path / "model.pt"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    def write() -> None:
        raise OSError(errno.ENOSPC, "No space left on device", "models/model.pt")

    with pytest.raises(SystemExit) as exit_info:
        exit_on_error(write)
    assert exit_info.value.code == 2
    said = capsys.readouterr().err
    assert said.count("\n") == 1
    assert said.startswith("error: no space left on the device writing models/model.pt; free")

    def other() -> None:
        raise OSError(errno.EACCES, "Permission denied", "x")

    with pytest.raises(PermissionError):  # not a disk-space problem: not dressed as one
        exit_on_error(other)
