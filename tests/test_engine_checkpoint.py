"""Checkpoints: atomic saves, weights_only loads, strict keys named, stock weights."""

from __future__ import annotations

import os

import pytest
import torch

import mutualnet_video  # noqa: F401
from mutualnet_video import checkpoint as ckpt_mod
from mutualnet_video.checkpoint import CorruptCheckpointError, MutualCheckpointer, load_weights
from mutualnet_video.engine.stream import capture_rng_state, restore_rng_state
from mutualnet_video.testing import create_toy_slimnet


def _model(seed=0):
    torch.manual_seed(seed)
    return create_toy_slimnet(channels=8)


def test_save_load_roundtrip_with_checkpointables(tmp_path):
    model = _model(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 4, 32, 32)).sum().backward()
    opt.step()
    saver = MutualCheckpointer(model, str(tmp_path), optimizer=opt)
    saver.save("model_0000001", iteration=1, rng=capture_rng_state())
    assert saver.get_checkpoint_file().endswith("model_0000001.pth")
    assert not any(f.endswith(".tmp") for f in os.listdir(tmp_path))

    other = _model(1)
    opt2 = torch.optim.SGD(other.parameters(), lr=0.1, momentum=0.9)
    extra = MutualCheckpointer(other, str(tmp_path), optimizer=opt2).load(saver.get_checkpoint_file())
    assert extra["iteration"] == 1 and "rng" in extra
    for (k, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    assert opt2.state_dict()["state"][0]["momentum_buffer"].equal(opt.state_dict()["state"][0]["momentum_buffer"])


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model = _model()
    saver = MutualCheckpointer(model, str(tmp_path))
    saver.save("model_final")
    path = tmp_path / "model_final.pth"
    good = path.read_bytes()

    real_save = torch.save

    def crashing_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.write(b"partial garbage")
        raise OSError("disk full (simulated)")

    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    monkeypatch.setattr(ckpt_mod.torch, "save", crashing_save)
    with pytest.raises(OSError, match="disk full"):
        saver.save("model_final")
    monkeypatch.setattr(ckpt_mod.torch, "save", real_save)
    assert path.read_bytes() == good
    assert not any(f.endswith(".tmp") for f in os.listdir(tmp_path))
    torch.load(path, weights_only=True)  # still a valid checkpoint


def test_refuses_to_save_non_finite_weights(tmp_path):
    model = _model()
    saver = MutualCheckpointer(model, str(tmp_path))
    saver.save("model_0000001")
    with torch.no_grad():
        model.proj.weight[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="proj.weight"):
        saver.save("model_0000002")
    assert saver.get_checkpoint_file().endswith("model_0000001.pth")
    assert not (tmp_path / "model_0000002.pth").exists()


class _Evil:
    def __reduce__(self):
        return (print, ("code ran",))


def test_load_is_weights_only(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    torch.save({"model": _model().state_dict(), "payload": _Evil()}, path)
    refused = r"evil\.pth: holds more than tensors and containers .*weights_only=True refused it, no code ran"
    with pytest.raises(CorruptCheckpointError, match=refused):
        MutualCheckpointer(_model(), str(tmp_path)).load(str(path))
    with pytest.raises(CorruptCheckpointError, match=refused):
        load_weights(_model(), str(path), source="model.weights")
    assert "code ran" not in capsys.readouterr().out  # the pickled print was never called


@pytest.mark.parametrize("damage", ["truncated", "junk", "empty"])
def test_a_damaged_checkpoint_is_named(tmp_path, damage):
    path = tmp_path / "model_final.pth"
    torch.save({"model": _model().state_dict()}, path)
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "junk": b"not a checkpoint", "empty": b""}[damage])
    with pytest.raises(CorruptCheckpointError, match=r"model_final\.pth: not a readable checkpoint"):
        load_weights(_model(), str(path))


def test_strict_load_names_missing_unexpected_and_shapes(tmp_path):
    state = _model().state_dict()
    missing = dict(state)
    missing.pop("proj.bias")
    missing["head.extra"] = torch.zeros(1)
    path = tmp_path / "bad.pth"
    torch.save({"model": missing}, path)
    with pytest.raises(RuntimeError, match=r"missing keys: proj\.bias.*unexpected keys: head\.extra"):
        MutualCheckpointer(_model(), str(tmp_path)).load(str(path))

    other = create_toy_slimnet(channels=8, model_num_class=7).state_dict()
    torch.save({"model_state": other}, path)
    with pytest.raises(RuntimeError, match=r"shape mismatch: proj\.weight \(checkpoint \(7, 16\) vs model \(5, 16\)\)"):
        load_weights(_model(), str(path), source="model.weights")


@pytest.mark.parametrize("layout", ["plain", "model_state", "module_prefix"])
def test_load_weights_stock_layouts(tmp_path, layout):
    source = _model(3)
    state = source.state_dict()
    if layout == "model_state":  # the PyTorchVideo model zoo layout
        obj = {"model_state": state, "epoch": 10}
    elif layout == "module_prefix":
        obj = {f"module.{k}": v for k, v in state.items()}
    else:
        obj = state
    path = tmp_path / "stock.pyth"
    torch.save(obj, path)
    target = _model(4)
    load_weights(target, str(path), source="model.weights")
    x = torch.randn(1, 3, 4, 32, 32)
    source.eval()
    target.eval()
    torch.testing.assert_close(target(x), source(x))
    with pytest.raises(FileNotFoundError, match="model.weights"):
        load_weights(target, str(tmp_path / "absent.pth"), source="model.weights")


def test_keep_prunes_old_periodic_checkpoints(tmp_path):
    saver = MutualCheckpointer(_model(), str(tmp_path), keep=2)
    for i in range(1, 5):
        saver.save(f"model_{i:07d}")
    saver.save("model_final")
    assert sorted(f for f in os.listdir(tmp_path) if f.endswith(".pth")) == [
        "model_0000003.pth", "model_0000004.pth", "model_final.pth"]


def test_rng_state_roundtrip_through_weights_only(tmp_path):
    import random

    import numpy as np

    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    state = capture_rng_state()
    path = tmp_path / "rng.pth"
    torch.save(state, path)
    want = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    restore_rng_state(torch.load(path, weights_only=True))
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(want[0], got[0]) and np.array_equal(want[1], got[1]) and want[2] == got[2]
