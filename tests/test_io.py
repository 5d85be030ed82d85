"""Files are written atomically and loaded without unpickling code."""

from __future__ import annotations

import pickle

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
