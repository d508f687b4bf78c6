"""Atomic writes that no planted symlink can redirect, and a full disk as one line."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from convvae.errors import exit_on_error
from convvae.runtime.files import atomic_path, write_json


def planted(target: Path, suffix: str) -> Path:
    """A victim file, and symlinks to it at every name .<target's name>.<pid><suffix> this
    process (or one started next to it) would once have written first."""
    victim = target.parent.parent / "victim.txt"
    victim.write_text("keep me")
    target.parent.mkdir()
    for pid in {os.getpid(), *range(os.getpid() - 2, os.getpid() + 3)}:
        (target.parent / f".{target.name}.{pid}{suffix}").symlink_to(victim)
    return victim


def test_a_planted_temporary_name_cannot_redirect_the_write(tmp_path: Path) -> None:
    # The temporary name was .<name>.<pid>.tmp: anyone who could write the folder could plant
    # a symlink there and have the next write overwrite the file it points to.
    target = tmp_path / "out" / "metrics.json"
    victim = planted(target, ".tmp")
    write_json({"a": 1}, target)
    assert victim.read_text() == "keep me"
    assert target.read_text() == '{\n  "a": 1\n}\n' and not target.is_symlink()
    # The file gets a plain new file's permissions, not the temporary's 0600.
    umask = os.umask(0o022)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_planted_name_cannot_redirect_the_splits(tmp_path: Path, mnist_slice) -> None:
    # save_splits wrote .<name>.<pid>.partial, a name anyone could plant a symlink at.
    from convvae.data.splits import load_splits, save_splits

    target = tmp_path / "data" / "splits.npz"
    victim = planted(target, ".partial")
    save_splits(mnist_slice, target)
    assert victim.read_text() == "keep me" and not target.is_symlink()
    assert (load_splits(target).train.images == mnist_slice.train.images).all()


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


# Each writer, in a child process whose file-size limit (ulimit -f, 64 KiB) the file passes:
# a real write failing in the OS, through the writer's own path (torch.save given a name used
# to report it as a RuntimeError about zip offsets, a traceback).
WRITERS = {
    "model": "from convvae.model.files import save_model\nsave_model(ConvVAE(TINY), target)",
    "checkpoint": "from convvae.training.checkpoint import save_checkpoint\n"
    "save_checkpoint({'model': ConvVAE(TINY).state_dict()}, target)",
    "splits": "from convvae.data.sources import load_source\n"
    "from convvae.data.splits import make_splits, save_splits\n"
    "save_splits(make_splits(load_source('mnist-5k'), 0.1, 0.2, seed=0), target)",
}
CHILD = """
import resource, signal, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from conftest import TINY
from convvae.errors import exit_on_error
from convvae.model.vae import ConvVAE
target = Path({target!r})
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill
resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.RLIM_INFINITY))
def write():
{body}
exit_on_error(write)
"""


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_a_write_past_a_size_limit_is_one_line_and_keeps_the_old_file(
    writer: str, tmp_path: Path
) -> None:
    import subprocess
    import sys

    target = tmp_path / "out" / f"{writer}.bin"
    target.parent.mkdir()
    target.write_bytes(b"finished work")
    body = "\n".join("    " + line for line in WRITERS[writer].splitlines())
    child = CHILD.format(tests=str(Path(__file__).parent), target=str(target), body=body)
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert str(target) in done.stderr
    assert "File too large" in done.stderr or "file-size limit" in done.stderr
    assert target.read_bytes() == b"finished work"
    assert [path.name for path in target.parent.iterdir()] == [target.name]
