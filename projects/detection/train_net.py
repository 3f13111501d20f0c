"""MutualNet object detection on an embedded toy dataset (a few CPU iterations).

    python projects/detection/train_net.py --config projects/detection/configs/fasterrcnn_mobilenet_v2_shapes.yaml [key=value ...]

Builds a slimmable Faster R-CNN (torchvision, FPN on a slimmable backbone), generates
coloured shapes on noise with their boxes (class = shape kind + 1), trains
``solver.iterations`` sandwich-rule iterations with
:func:`mutualnet_video.models.detection.detection_mutual_step` and prints the losses per
configuration, then the number of detections of every evaluation configuration.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import yaml

import mutualnet_video  # noqa: F401  (compat shims)
from mutualnet_video.core import get_space, use_config
from mutualnet_video.models import detection  # noqa: F401  (registers the detector entrypoints)
from mutualnet_video.models.detection import detection_mutual_step
from mutualnet_video.models.registry import create_model


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


def make_shapes(*, num_images: int, height: int, width: int, max_objects: int, seed: int):
    """Images ``(3, H, W)`` in [0, 1] with 1..max_objects shapes, and torchvision detection targets."""
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    images, targets = [], []
    for _ in range(num_images):
        image = 0.3 * torch.rand(3, height, width, generator=gen)
        boxes, labels = [], []
        for _ in range(int(torch.randint(1, max_objects + 1, (), generator=gen))):
            kind = int(torch.randint(0, 3, (), generator=gen))
            r = int(torch.randint(min(height, width) // 8, min(height, width) // 4, (), generator=gen))
            cy = int(torch.randint(r, height - r, (), generator=gen))
            cx = int(torch.randint(r, width - r, (), generator=gen))
            mask = [(yy - cy).abs().le(r) & (xx - cx).abs().le(r),
                    (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r,
                    (yy - cy).abs().le(max(1, r // 3)) & (xx - cx).abs().le(r)][kind]
            image[:, mask] = 0.4 + 0.6 * torch.rand(3, 1, generator=gen)
            ys, xs = mask.nonzero(as_tuple=True)
            boxes.append([float(xs.min()), float(ys.min()), float(xs.max()) + 1, float(ys.max()) + 1])
            labels.append(kind + 1)
        images.append(image)
        targets.append({"boxes": torch.tensor(boxes), "labels": torch.tensor(labels)})
    return images, targets


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
    images, targets = make_shapes(num_images=d["num_images"], height=d["height"], width=d["width"],
                                  max_objects=d["max_objects"], seed=cfg["seed"])
    s = cfg["solver"]
    optimizer = torch.optim.SGD(model.parameters(), lr=s["lr"], momentum=s["momentum"], weight_decay=s["weight_decay"])
    gen = torch.Generator().manual_seed(cfg["seed"])
    history = []
    for it in range(s["iterations"]):
        index = torch.randperm(len(images), generator=gen)[: d["batch_size"]].tolist()
        report = detection_mutual_step(model, [images[i] for i in index], [targets[i] for i in index],
                                       configs=space.sandwich(gen), optimizer=optimizer,
                                       task_weight=s["task_weight"], distill_weight=s["distill_weight"])
        for sub_cfg, losses in report:
            print(f"iter {it} {sub_cfg}: " + " ".join(f"{k}={v:.4f}" for k, v in losses.items()))
        history.append(report)
    model.eval()
    detections = {}
    with torch.no_grad():
        for sub_cfg in space.grid():
            with use_config(model, sub_cfg):
                out = model(images[:2])
                min_size = model.transform.min_size[0]
            detections[sub_cfg] = [len(o["boxes"]) for o in out]
            print(f"eval {sub_cfg}: min_size={min_size} detections per image={detections[sub_cfg]}")
    return {"history": history, "detections": detections}


if __name__ == "__main__":
    main(sys.argv[1:])
