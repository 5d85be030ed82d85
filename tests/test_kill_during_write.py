"""Kill-during-write: every writer nnic has leaves the old version or the new one, never a broken one.

A forked child writes versions 1, 0, 1, ... of an artefact in a loop and is SIGKILLed at a random moment; then the
artefact is loaded and must equal one complete version (for a pair of files: both halves from one export, or a
load that says they are not). A final save must leave no temporaries behind. Each writer takes well under a second.
"""

from __future__ import annotations

import os
import random
import select
import signal
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

import nnic
from nnic import io
from nnic.speedup import load_pruned, save_pruned, speedup_model

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

KILLS = 6
MAX_KILLS = 40  # when none of the first KILLS landed mid-write (a fast disk, a loaded machine), keep killing
CHILD_TIMEOUT_S = 120  # one write takes well under a second; a child silent this long is stuck
PIPE_BUF = 4096  # a pipe write up to this size arrives whole
# Each fsync in the writing child first waits this long, as a real disk's would take: on a fast one (a page-cache
# backed /tmp) a small artefact's temporary lived for a few microseconds of a cycle spent mostly serialising, and 40
# random kills in a row could all miss it (seen in CI for the JSON writer).
CHILD_FSYNC_S = 0.01


def kill_while_writing(directory: Path, write: Callable[[int], None], check: Callable[[], int | None],
                       expected: set[str], *, seed: int) -> None:
    """Write version 0, then KILLS times (more, up to MAX_KILLS, until one lands mid-write): fork a child writing
    1, 0, 1, ..., SIGKILL it, run ``check``.

    The child reports each completed write through a pipe; the parent lets one or two complete, then kills at a
    random moment of the next ones. ``check`` loads the artefact and returns the version it found (None for a pair
    that loading refuses as mixed). The kills must land mid-write: at least one leaves a temporary behind.
    """
    rng = random.Random(seed)
    write(0)
    assert check() == 0
    seen, interrupted = [], 0
    while len(seen) < KILLS or (not interrupted and len(seen) < MAX_KILLS):
        done_r, done_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            try:
                os.close(done_r)
                torch.set_num_threads(1)  # the parent's OpenMP team did not survive the fork
                fsync = os.fsync

                def disk_fsync(fd: int) -> None:
                    time.sleep(CHILD_FSYNC_S)
                    fsync(fd)

                os.fsync = disk_fsync  # this child's only: it never returns into pytest
                version = 0
                while True:
                    version = 1 - version
                    write(version)
                    os.write(done_w, b".")
            except BaseException:  # tell the parent why, instead of a bare end of the pipe
                os.write(done_w, traceback.format_exc().encode()[-PIPE_BUF:])
            finally:
                os._exit(0)
        os.close(done_w)
        for _ in range(rng.randint(1, 2)):
            _await_one_write(done_r, pid)
        time.sleep(rng.uniform(0.0, 0.03))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(done_r)
        interrupted += any(".nnic-tmp" in p.name for p in directory.rglob("*"))
        seen.append(check())
    assert set(seen) <= {0, 1, None} and interrupted >= 1, (seen, interrupted)
    write(0)
    assert check() == 0
    assert {p.name for p in directory.iterdir()} == expected  # what the killed writers left is cleaned up


def _await_one_write(done_r: int, pid: int) -> None:
    """Wait for the child's report of one completed write; a child that died or stalls fails the test naming why
    (its traceback, or the wait) rather than as a bare assertion on the pipe or a hang."""
    ready, _, _ = select.select([done_r], [], [], CHILD_TIMEOUT_S)
    report = os.read(done_r, 1) if ready else b""
    if report == b".":
        return
    if report:
        report += os.read(done_r, PIPE_BUF)
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    why = report.decode(errors="replace") if report else (
        f"no report in {CHILD_TIMEOUT_S} s" if not ready else f"it ended with wait status {status} and no traceback")
    pytest.fail(f"the writing child did not complete a write: {why}")


def versioned_state(version: int) -> dict[str, torch.Tensor]:
    return {"w": torch.full((256, 256), float(version)), f"only_in_{version}": torch.zeros(3)}


def version_of_state(state: dict) -> int:
    version = int(state["w"][0, 0])
    assert set(state) == {"w", f"only_in_{version}"} and bool((state["w"] == version).all())
    return version


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_save_tensors_and_masks_survive_kills(tmp_path, suffix):
    target, masks = tmp_path / f"t{suffix}", tmp_path / f"m{suffix}"

    def write(version):
        io.save_tensors(versioned_state(version), target)
        io.save_masks({f"layer{version}": {"weight": torch.full((64,), bool(version))}}, masks)

    def check():
        version = version_of_state(io.load_tensors(target))
        loaded = io.load_masks(masks)
        assert len(loaded) == 1
        (layer, per_param), = loaded.items()
        assert bool((per_param["weight"] == (layer == "layer1")).all())
        return version

    kill_while_writing(tmp_path, write, check, {target.name, masks.name}, seed=1)


def test_save_json_survives_kills(tmp_path):
    target = tmp_path / "c.json"

    def write(version):
        io.save_json({"version": version, "payload": [version] * 20000}, target)

    def check():
        data = io.load_json(target)
        assert data["payload"] == [data["version"]] * 20000
        return data["version"]

    kill_while_writing(tmp_path, write, check, {target.name}, seed=2)


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 64))


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_pruner_export_pairs_are_consistent_or_refused(tmp_path, suffix):
    pruners = [nnic.pruner("level", mlp(), [{"sparsity": s, "op_types": ["Linear"]}]) for s in (0.25, 0.75)]
    for p in pruners:
        p.compress()
    model_path, mask_path = tmp_path / f"model{suffix}", tmp_path / f"masks{suffix}"

    def check():
        for path in (model_path, mask_path):  # each file alone: complete
            io.load_tensors(path)
        try:
            state, masks = io.load_export(model_path, mask_path)
        except ValueError as exc:
            assert "not the two halves of one export" in str(exc)
            return None
        kept = int(masks["0"]["weight"].sum())
        version = {256 * 128 * 3 // 4: 0, 256 * 128 // 4: 1}[kept]
        assert int(state["0.weight"].count_nonzero()) == kept
        return version

    kill_while_writing(tmp_path, lambda v: pruners[v].export_model(model_path, mask_path), check,
                       {model_path.name, mask_path.name}, seed=3)


def test_quantizer_exports_survive_kills(tmp_path):
    exports = []
    for bits in (8, 4):
        q = nnic.quantizer("naive", mlp(), [{"quant_types": ["weight"], "quant_bits": bits, "op_types": ["Linear"]}])
        q.compress()
        exports.append(q)
    model_path, calibration_path = tmp_path / "q.safetensors", tmp_path / "calibration.json"

    def check():
        state = io.load_tensors(model_path)  # each file complete; the pair is not tagged (see the report)
        levels = len(torch.unique(state["0.weight"][0]))
        bits = io.load_json(calibration_path)["0"]["weight_bits"]
        assert bits in (8, 4) and levels <= 2 ** 8
        return 1 if levels <= 2 ** 4 else 0

    kill_while_writing(tmp_path, lambda v: exports[v].export_model(model_path, calibration_path), check,
                       {model_path.name, calibration_path.name}, seed=4)


def pruned_cnn(sparsity: float) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 8, 3)).eval()
    _, masks = nnic.pruner("l1norm", model, [{"sparsity": sparsity, "op_names": ["0"]}]).compress()
    speedup_model(model, torch.randn(1, 3, 8, 8), masks)
    return model


def test_save_pruned_is_all_or_nothing(tmp_path):
    models = [pruned_cnn(0.25), pruned_cnn(0.75)]
    directory = tmp_path / "pruned"

    def check():
        loaded = load_pruned(nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 8, 3)), directory)
        version = {12: 0, 4: 1}[loaded[0].out_channels]
        assert torch.equal(loaded[0].weight, models[version][0].weight)
        return version

    kill_while_writing(tmp_path, lambda v: save_pruned(models[v], directory), check, {"pruned"}, seed=5)
    assert {p.name for p in directory.iterdir()} == {"manifest.json", "model.safetensors"}
