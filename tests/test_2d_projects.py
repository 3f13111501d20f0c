"""A few training iterations of each 2D project (instant-test configs)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1] / "projects"


def _load(project: str):
    path = ROOT / project / "train_net.py"
    spec = importlib.util.spec_from_file_location(f"_project_{project}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("project, config, overrides", [
    ("image_classification", "mobilenet_v1_shapes.yaml", ["solver.iterations=2", "data.num_images=6", "data.batch_size=4"]),
    ("detection", "fasterrcnn_mobilenet_v2_shapes.yaml", ["solver.iterations=1", "data.num_images=2"]),
    ("segmentation", "deeplabv3_mobilenet_v2_shapes.yaml", ["solver.iterations=1", "data.num_images=2"]),
])
def test_project_trains_a_few_iterations(project, config, overrides, capsys):
    module = _load(project)
    result = module.main(["--config", str(ROOT / project / "configs" / config), *overrides])
    iterations = int(overrides[0].split("=")[1])
    assert len(result["history"]) == iterations
    for report in result["history"]:
        cfgs = [cfg for cfg, _ in report]
        assert cfgs[0].width == 1.0 and len(cfgs) >= 2
        for _, losses in report:
            assert losses and all(math.isfinite(v) for v in losses.values())
    out = capsys.readouterr().out
    assert out.count("iter 0 ") == len(result["history"][0])
    # BN is calibrated per configuration before every evaluation configuration is scored
    results = next(v for k, v in result.items() if k != "history")
    assert "calibrated BN statistics of" in out and out.index("calibrated BN") < out.index("eval ")
    assert out.count("eval ") == len(results) >= 2


def test_toy_shapes_masks_match_the_drawn_pixels():
    from mutualnet_video.data.shapes import shape_mask, shapes_segmentation

    images, masks = shapes_segmentation(num_images=3, size=32, max_objects=2, seed=0)
    assert images.shape == (3, 3, 32, 32) and masks.shape == (3, 32, 32) and set(masks.unique().tolist()) > {0}
    # background noise is < 0.3, every shape colour >= 0.4 in all channels
    assert torch.equal(masks > 0, images.min(dim=1).values >= 0.4)
    with pytest.raises(ValueError, match="kind must be 0, 1 or 2, got 3"):
        shape_mask(3, cy=4, cx=4, r=2, grid=torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij"))


def test_config_override_errors_name_the_key(tmp_path):
    module = _load("image_classification")
    config = ROOT / "image_classification" / "configs" / "mobilenet_v1_shapes.yaml"
    with pytest.raises(KeyError, match="solver.nope"):
        module.load_config(str(config), ["solver.nope=1"])
    with pytest.raises(ValueError, match="key=value"):
        module.load_config(str(config), ["solver.lr"])
