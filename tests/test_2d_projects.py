"""A few training iterations of each 2D project (instant-test configs)."""

from __future__ import annotations

import json
import math
import runpy
import sys
from pathlib import Path

import pytest
import torch

from mutualnet_video.core import SubnetConfig

ROOT = Path(__file__).resolve().parents[1] / "projects"


def _main(project: str, argv: list[str]) -> dict:
    """What ``projects/<project>/train_net.py ARGV`` runs (the scripts are this one call)."""
    from mutualnet_video.tasks.projects import run_project

    return run_project(argv, description=f"{project} project")


@pytest.mark.parametrize("project", ["image_classification", "detection", "segmentation"])
def test_project_scripts_run_the_shared_driver(project, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [f"{project}/train_net.py", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(ROOT / project / "train_net.py"), run_name="__main__")
    assert exit_info.value.code == 0 and "--config" in capsys.readouterr().out


@pytest.mark.parametrize("project, config, overrides", [
    ("image_classification", "mobilenet_v1_shapes.yaml", ["optim.max_iters=2", "data.train.num_images=6",
                                                          "data.batch_size=4"]),
    ("detection", "fasterrcnn_mobilenet_v2_shapes.yaml", ["optim.max_iters=1", "data.train.num_images=2"]),
    ("segmentation", "deeplabv3_mobilenet_v2_shapes.yaml", ["optim.max_iters=1", "data.train.num_images=2"]),
])
def test_project_trains_a_few_iterations(project, config, overrides, capsys, tmp_path):
    result = _main(project, ["--config", str(ROOT / project / "configs" / config), *overrides,
                          f"output_dir={tmp_path}"])
    iterations = int(overrides[0].split("=")[1])
    assert len(result["history"]) == iterations
    for report in result["history"]:
        cfgs = [cfg for cfg, _ in report]
        assert cfgs[0].width == 1.0 and len(cfgs) >= 2
        for _, losses in report:
            assert losses and all(math.isfinite(v) for v in losses.values())
    out = capsys.readouterr().out
    assert out.count("iter 0 ") == len(result["history"][0])
    # BN is calibrated per configuration before every configuration of the space is scored
    rows = result["final"]
    configs = [SubnetConfig.from_tag(r["config"]) for r in rows]
    assert len(configs) >= 4 and configs[0].width == 1.0 and all(r["calibrated"] for r in rows)
    assert f"calibrated BN statistics of {len(rows)} configurations" in out
    scored = out[out.index("calibrated BN statistics"):]
    if project == "image_classification":  # logits: the final table, one line per configuration
        printed = {tuple(line.split()[:3]) for line in scored.splitlines()}
        assert all((f"{c.width:.3g}", "-", str(c.crop)) in printed for c in configs), scored
        assert all(0 <= r["top1"] <= 100 for r in rows)
    else:  # the task's own score, one line per configuration
        assert scored.count("eval ") == len(rows) and all(f"eval {c}:" in scored for c in configs)
    saved = json.loads((tmp_path / "final_evaluation.json").read_text())["rows"]
    assert [r["config"] for r in saved] == [r["config"] for r in rows]
    # the video runs' machinery: checkpoints, metrics, the saved config
    assert (tmp_path / "model_final.pth").is_file() and (tmp_path / "config.yaml").is_file()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len([line for line in lines if "train/loss_full" in line]) == iterations


def test_toy_shapes_masks_match_the_drawn_pixels():
    from mutualnet_video.data.shapes import shape_mask, shapes_segmentation

    images, masks = shapes_segmentation(num_images=3, size=32, max_objects=2, seed=0)
    assert images.shape == (3, 3, 32, 32) and masks.shape == (3, 32, 32) and set(masks.unique().tolist()) > {0}
    # background noise is < 0.3, every shape colour >= 0.4 in all channels
    assert torch.equal(masks > 0, images.min(dim=1).values >= 0.4)
    with pytest.raises(ValueError, match="kind must be 0, 1 or 2, got 3"):
        shape_mask(3, cy=4, cx=4, r=2, grid=torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij"))


def test_config_errors_name_the_key_and_the_replacement_of_removed_keys(tmp_path):
    from mutualnet_video.engine import ConfigError, load_config

    config = ROOT / "image_classification" / "configs" / "mobilenet_v1_shapes.yaml"
    with pytest.raises(ConfigError, match=r"optim\.nope: unknown key"):
        load_config(str(config), ["optim.nope=1"])
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config(str(config), ["optim.lr"])
    with pytest.raises(ConfigError, match=r"solver: removed; use optim .*max_iters"):
        load_config(str(config), ["solver.iterations=2"])
    old = tmp_path / "old.yaml"  # the projects' schema before they shared the video one
    old.write_text("model: {name: mutual_mobilenet_v1, kwargs: {num_classes: 3}}\n")
    with pytest.raises(ConfigError, match=r"model\.name / model\.kwargs: removed; write model\._target_: "
                                          r"mutualnet_video\.models\.mutual_mobilenet_v1"):
        load_config(str(old))


def test_project_resumes_and_a_bad_config_exits_2_with_one_line(tmp_path, capsys):
    config = str(ROOT / "image_classification" / "configs" / "mobilenet_v1_shapes.yaml")
    common = ["--config", config, "data.train.num_images=6", "data.batch_size=4", f"output_dir={tmp_path}",
              "train.checkpoint_period=1", "optim.max_iters=2"]
    first = _main("image_classification", common)
    (tmp_path / "model_final.pth").unlink()  # as if killed during the last iteration
    (tmp_path / "last_checkpoint").write_text("model_0000001.pth")
    capsys.readouterr()
    result = _main("image_classification", [*common, "--resume"])
    assert len(result["history"]) == 1  # iteration 0 came from the checkpoint
    out = capsys.readouterr().out
    assert "iter 1 " in out and "iter 0 " not in out
    assert result["history"][0] == first["history"][1]  # the same losses as the uninterrupted run
    with pytest.raises(SystemExit) as exit_info:
        _main("image_classification", ["--config", config, "optim.lr=-1"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == "train_net: optim.lr: must be > 0, got -1"
