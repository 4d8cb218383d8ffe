"""What a careless user runs into, each answered by one line and a status: a full disk under a
checkpoint, a run too large for memory, ``--out`` pointing at someone's folder, warnings, a pipe
closed early."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from safetensors import SafetensorError

from indpred.cli import main
from indpred.config import apply_overrides
from indpred.train import train
from tests.conftest import TINY

SETS = [a for kv in [*TINY, "train.threads=1", "train.checkpoint_every=2"] for a in ("--set", kv)]


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("indpred: error: "), err
    return lines[0]


def test_full_disk_in_safetensors_names_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--steps", "2", "--no-progress", *SETS]) == 0
    import indpred.checkpoint as ck

    def full(tensors, path, *a, **kw):  # what safetensors raises when the disk fills
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
                              "message: \"No space left on device\" })")

    monkeypatch.setattr(ck, "save_file", full)
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(run), "--steps", "4", "--no-progress"]) == 2
    line = one_error_line(capsys)
    assert "No space left on device" in line and "step-00000002 is intact" in line and "--resume" in line
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-00000002"]


def test_out_of_memory_building_the_model_is_one_line(tmp_path, capsys, monkeypatch):
    import indpred.train.setup as setup

    def too_big(*a, **kw):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 40000000000000 bytes.")

    monkeypatch.setattr(setup, "FactoredVAE", too_big)
    assert main(["train", "--out", str(tmp_path / "run"), "--steps", "2", "--no-progress", *SETS]) == 2
    line = one_error_line(capsys)
    assert "out of memory building the model" in line and "train.batch_size" in line


def test_out_of_memory_at_the_first_step_is_one_line_but_later_ones_are_not_hidden(tmp_path, tiny_config,
                                                                                   monkeypatch):
    import indpred.train.loop as loop

    real, calls = loop.forward_backward, []

    def oom_at(n):
        def step(*a, **kw):
            calls.append(1)
            if len(calls) == n:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
            return real(*a, **kw)
        return step

    monkeypatch.setattr(loop, "forward_backward", oom_at(1))
    with pytest.raises(Exception, match=r"out of memory at the first step .*lower train\.batch_size"):
        train(tiny_config, tmp_path / "a", steps=3, progress=False)
    calls.clear()
    monkeypatch.setattr(loop, "forward_backward", oom_at(2))
    with pytest.raises(torch.OutOfMemoryError):  # not the size of the run: the real error, unchanged
        train(tiny_config, tmp_path / "b", steps=3, progress=False)


def test_train_refuses_a_folder_of_other_files_unless_forced(tmp_path, capsys, tiny_config):
    folder = tmp_path / "papers"
    folder.mkdir()
    (folder / "thesis.tex").write_text("precious")
    assert main(["train", "--out", str(folder), "--steps", "1", "--no-progress", *SETS]) == 2
    assert "is a folder of other files, not a run" in one_error_line(capsys)
    assert sorted(p.name for p in folder.iterdir()) == ["thesis.tex"]  # nothing written
    assert main(["train", "--out", str(folder), "--steps", "1", "--no-progress", "--force", *SETS]) == 0
    assert (folder / "thesis.tex").read_text() == "precious" and (folder / "config.json").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert train(apply_overrides(tiny_config, []), empty, steps=1, progress=False).step == 1


def test_a_skipped_checkpoint_warns_in_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--steps", "4", "--no-progress", *SETS]) == 0
    newest = sorted((run / "checkpoints").glob("step-*"))[-1]
    (newest / "model.safetensors").write_bytes(b"corrupt")
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(run), "--steps", "5", "--no-progress"]) == 0
    err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert len(err) == 1 and err[0].startswith("indpred: warning: skipping checkpoint step-00000004"), err


def test_output_piped_into_a_reader_that_stops_ends_quietly():
    proc = subprocess.Popen([sys.executable, "-m", "indpred", "presets", "--show", "demo"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the first line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141 and "Traceback" not in err and "BrokenPipe" not in err
