"""MutualNet semantic segmentation on an embedded toy dataset (a few CPU iterations).

    python projects/segmentation/train_net.py --config projects/segmentation/configs/deeplabv3_mobilenet_v2_shapes.yaml [key=value ...]

Builds a slimmable DeepLabV3 / FCN (torchvision heads on a slimmable backbone), generates
coloured shapes on noise with per-pixel masks (0 background, shape kind + 1), trains
``solver.iterations`` sandwich-rule iterations with
:func:`mutualnet_video.models.segmentation.segmentation_mutual_step` and prints the
losses per configuration, then the pixel accuracy of every evaluation configuration.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

import mutualnet_video  # noqa: F401  (compat shims)
from mutualnet_video.core import get_space, resize_crop, use_config
from mutualnet_video.models import segmentation  # noqa: F401  (registers the segmenter entrypoints)
from mutualnet_video.models.registry import create_model
from mutualnet_video.models.segmentation import segmentation_mutual_step


def load_config(path: str, overrides: list[str]) -> dict:
    """YAML config with ``a.b=value`` overrides (values parsed as YAML)."""
    cfg = yaml.safe_load(Path(path).read_text())
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r}: expected key=value")
        node = cfg
        *parents, leaf = key.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise KeyError(f"override {item!r}: {part!r} is not a section of {path}")
            node = node[part]
        if leaf not in node:
            raise KeyError(f"override {item!r}: unknown key {key!r} in {path}")
        node[leaf] = yaml.safe_load(value)
    return cfg


def make_shapes(*, num_images: int, size: int, max_objects: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, 3, S, S)`` images in [0, 1] and ``(N, S, S)`` int64 masks (0 background, 1..3 shapes)."""
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    images = 0.3 * torch.rand(num_images, 3, size, size, generator=gen)
    masks = torch.zeros(num_images, size, size, dtype=torch.long)
    for i in range(num_images):
        for _ in range(int(torch.randint(1, max_objects + 1, (), generator=gen))):
            kind = int(torch.randint(0, 3, (), generator=gen))
            r = int(torch.randint(size // 8, size // 4, (), generator=gen))
            cy, cx = (int(v) for v in torch.randint(r, size - r, (2,), generator=gen))
            shape = [(yy - cy).abs().le(r) & (xx - cx).abs().le(r),
                     (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r,
                     (yy - cy).abs().le(max(1, r // 3)) & (xx - cx).abs().le(r)][kind]
            images[i][:, shape] = 0.4 + 0.6 * torch.rand(3, 1, generator=gen)
            masks[i][shape] = kind + 1
    return images, masks


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("overrides", nargs="*", help="key=value, e.g. solver.iterations=2")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    torch.manual_seed(cfg["seed"])
    model = create_model(cfg["model"]["name"], **cfg["model"].get("kwargs", {}))
    space = get_space(model)
    d = cfg["data"]
    images, masks = make_shapes(num_images=d["num_images"], size=space.full().crop,
                                max_objects=d["max_objects"], seed=cfg["seed"])
    s = cfg["solver"]
    optimizer = torch.optim.SGD(model.parameters(), lr=s["lr"], momentum=s["momentum"], weight_decay=s["weight_decay"])
    gen = torch.Generator().manual_seed(cfg["seed"])
    history = []
    for it in range(s["iterations"]):
        index = torch.randperm(len(images), generator=gen)[: d["batch_size"]]
        report = segmentation_mutual_step(model, images[index], masks[index], configs=space.sandwich(gen),
                                          optimizer=optimizer, task_weight=s["task_weight"],
                                          distill_weight=s["distill_weight"])
        for sub_cfg, losses in report:
            print(f"iter {it} {sub_cfg}: " + " ".join(f"{k}={v:.4f}" for k, v in losses.items()))
        history.append(report)
    model.eval()
    accuracy = {}
    with torch.no_grad():
        for sub_cfg in space.grid():
            with use_config(model, sub_cfg):
                logits = model(resize_crop(images, sub_cfg.crop))["out"]
            pred = F.interpolate(logits, size=masks.shape[-2:], mode="bilinear", align_corners=False).argmax(1)
            accuracy[sub_cfg] = float((pred == masks).float().mean())
            print(f"eval {sub_cfg}: pixel accuracy={accuracy[sub_cfg]:.3f} (no BN calibration)")
    return {"history": history, "accuracy": accuracy}


if __name__ == "__main__":
    main(sys.argv[1:])
