"""Files are written atomically and loaded without unpickling code."""

from __future__ import annotations

import os
import pickle
import stat
import subprocess
import sys

import pytest
import torch

from nnic import io


def test_a_failed_write_leaves_neither_the_target_nor_a_temporary_file(tmp_path):
    def explode(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        io.atomic_write(tmp_path / "out.pt", explode)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_keeps_the_previous_file(tmp_path):
    target = tmp_path / "c.json"
    io.save_json({"a": 1}, target)
    with pytest.raises(ValueError):
        io.save_json({"a": float("nan")}, target)  # JSON has no NaN: refused before anything is written
    assert io.load_json(target) == {"a": 1}
    assert list(tmp_path.iterdir()) == [target]


def test_missing_directory_and_directory_targets_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        io.save_tensors({"a": torch.zeros(1)}, tmp_path / "nope" / "m.pt")
    with pytest.raises(IsADirectoryError, match="it is a directory"):
        io.save_tensors({"a": torch.zeros(1)}, tmp_path)


def test_loading_refuses_pickled_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, path)
    with pytest.raises(pickle.UnpicklingError):
        io.load_tensors(path)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_tensors_and_masks_round_trip(tmp_path, suffix):
    tied = torch.randn(3, 3)
    io.save_tensors({"a.weight": tied, "b.weight": tied}, tmp_path / f"m{suffix}")
    loaded = io.load_tensors(tmp_path / f"m{suffix}")
    assert torch.equal(loaded["a.weight"], tied) and torch.equal(loaded["b.weight"], tied)
    masks = {"layer.sub": {"weight": torch.tensor([True, False]), "bias": None}}
    io.save_masks(masks, tmp_path / f"k{suffix}")
    back = io.load_masks(tmp_path / f"k{suffix}")
    assert torch.equal(back["layer.sub"]["weight"], masks["layer.sub"]["weight"])


def test_an_empty_file_is_a_value_error_naming_it(tmp_path):
    for name in ("empty.pt", "empty.safetensors"):
        (tmp_path / name).write_bytes(b"")
        with pytest.raises(ValueError, match=rf"cannot load .*{name}'.*empty \(0 bytes\)"):
            io.load_tensors(tmp_path / name)


@pytest.mark.parametrize("name", ["cut.pt", "cut.safetensors"])
def test_a_truncated_file_is_a_value_error_naming_it(tmp_path, name):
    io.save_tensors({"w": torch.randn(64, 64)}, tmp_path / name)
    data = (tmp_path / name).read_bytes()
    (tmp_path / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=rf"cannot load .*{name}'"):
        io.load_tensors(tmp_path / name)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_get_the_mode_the_umask_gives(tmp_path, umask):
    old = os.umask(umask)
    try:
        io.save_json({"a": 1}, tmp_path / "c.json")
        io.save_tensors({"w": torch.zeros(2)}, tmp_path / "w.safetensors")
        io.atomic_directory(tmp_path / "d", lambda new: io.save_json({}, new / "x.json"), owned=("x.json",))
    finally:
        os.umask(old)
    for name in ("c.json", "w.safetensors", "d/x.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask, name
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o777 & ~umask


def test_temporaries_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    target = tmp_path / "m.pt"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    stale = tmp_path / f".m.pt.{int(dead.stdout)}-0123abcd.nnic-tmp"
    live = tmp_path / f".m.pt.{os.getppid()}-0123abcd.nnic-tmp"  # pytest's parent: alive
    other = tmp_path / f".other.pt.{int(dead.stdout)}-0123abcd.nnic-tmp"  # another target's: not ours to judge
    for path in (stale, live, other):
        path.write_bytes(b"half")
    io.save_tensors({"w": torch.zeros(2)}, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, live.name, other.name])


def test_a_pair_from_two_exports_is_refused_on_load(tmp_path):
    for suffix in (".pt", ".safetensors"):
        model, masks = tmp_path / f"m{suffix}", tmp_path / f"k{suffix}"
        first, second = io.new_export_id(), io.new_export_id()
        io.save_tensors({"fc.weight": torch.ones(2)}, model, export_id=first)
        io.save_masks({"fc": {"weight": torch.tensor([True, False])}}, masks, export_id=first)
        state, loaded = io.load_export(model, masks)
        assert torch.equal(state["fc.weight"], torch.ones(2)) and loaded["fc"]["weight"].tolist() == [True, False]
        io.save_tensors({"fc.weight": torch.zeros(2)}, model, export_id=second)
        with pytest.raises(ValueError, match=r"are not the two halves of one export"):
            io.load_export(model, masks)


def test_a_directory_holding_other_files_is_not_replaced(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"holds files nnic did not write there \(notes.txt\)"):
        io.atomic_directory(tmp_path, lambda new: None, owned=("x.json",))
    assert (tmp_path / "notes.txt").read_text() == "mine"
