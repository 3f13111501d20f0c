"""MutualNet image classification on an embedded toy dataset (a few CPU iterations).

    python projects/image_classification/train_net.py --config projects/image_classification/configs/mobilenet_v2_shapes.yaml [key=value ...]

Builds a registered slimmable 2D classifier, generates coloured shapes on noise (label =
shape kind), trains ``solver.iterations`` sandwich-rule iterations (full config on the
labels, sub-networks on the full network's soft labels, one optimizer step) and prints the
losses per configuration, then the accuracy of every evaluation configuration.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

import mutualnet_video  # noqa: F401  (compat shims)
from mutualnet_video.core import SubnetConfig, clip_for_config, distillation_loss, get_space, use_config
from mutualnet_video.models import mobilenet, resnet2d  # noqa: F401  (registers the 2D entrypoints)
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


def make_shapes(*, num_images: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, 3, size, size)`` images in [0, 1] with one shape each, and labels 0 square, 1 disk, 2 bar."""
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    images = 0.3 * torch.rand(num_images, 3, size, size, generator=gen)
    labels = torch.randint(0, 3, (num_images,), generator=gen)
    for i in range(num_images):
        r = int(torch.randint(size // 6, size // 3, (), generator=gen))
        cy, cx = (int(v) for v in torch.randint(r, size - r, (2,), generator=gen))
        shape = [(yy - cy).abs().le(r) & (xx - cx).abs().le(r),
                 (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r,
                 (yy - cy).abs().le(max(1, r // 3)) & (xx - cx).abs().le(r)][int(labels[i])]
        images[i][:, shape] = (0.4 + 0.6 * torch.rand(3, 1, generator=gen))
    return images, labels


def local_sandwich_step(model, images, labels, *, configs: list[SubnetConfig], optimizer) -> list[tuple[SubnetConfig, dict]]:
    """INTEGRATOR: replace with ``mutualnet_video.engine.mutual_step`` once merged.

    Minimal sandwich rule: full config on the labels, the others KL to its logits, one step.
    """
    optimizer.zero_grad(set_to_none=True)
    teacher, report = None, []
    for cfg in configs:
        with use_config(model, cfg):
            logits = model(clip_for_config(images, cfg))
        if teacher is None:
            loss, name, teacher = F.cross_entropy(logits, labels), "loss_ce", logits.detach()
        else:
            loss, name = distillation_loss(logits, teacher), "loss_distill"
        loss.backward()
        report.append((cfg, {name: float(loss.detach())}))
    optimizer.step()
    return report


def train_step(model, images, labels, *, configs, optimizer):
    """The engine's ``mutual_step`` when importable, else the local stand-in."""
    try:
        from mutualnet_video.engine import mutual_step
    except ImportError:
        return local_sandwich_step(model, images, labels, configs=configs, optimizer=optimizer)
    sub_inputs = [(cfg, clip_for_config(images, cfg)) for cfg in configs]
    return mutual_step(model, sub_inputs, labels, criterion=torch.nn.CrossEntropyLoss(),
                       distill=distillation_loss, optimizer=optimizer)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("overrides", nargs="*", help="key=value, e.g. solver.iterations=2")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    torch.manual_seed(cfg["seed"])
    model = create_model(cfg["model"]["name"], **cfg["model"].get("kwargs", {}))
    space = get_space(model)
    images, labels = make_shapes(num_images=cfg["data"]["num_images"], size=space.full().crop, seed=cfg["seed"])
    s = cfg["solver"]
    optimizer = torch.optim.SGD(model.parameters(), lr=s["lr"], momentum=s["momentum"],
                                nesterov=s["nesterov"], weight_decay=s["weight_decay"])
    gen = torch.Generator().manual_seed(cfg["seed"])
    batch = cfg["data"]["batch_size"]
    history = []
    model.train()
    for it in range(s["iterations"]):
        index = torch.randperm(len(images), generator=gen)[:batch]
        report = train_step(model, images[index], labels[index], configs=space.sandwich(gen), optimizer=optimizer)
        for sub_cfg, losses in report:
            print(f"iter {it} {sub_cfg}: " + " ".join(f"{k}={v:.4f}" for k, v in losses.items()))
        history.append(report)
    model.eval()
    accuracy = {}
    with torch.no_grad():
        for sub_cfg in space.grid():
            with use_config(model, sub_cfg):
                pred = model(clip_for_config(images, sub_cfg)).argmax(1)
            accuracy[sub_cfg] = float((pred == labels).float().mean())
            print(f"eval {sub_cfg}: top1={accuracy[sub_cfg]:.3f} (no BN calibration)")
    return {"history": history, "accuracy": accuracy}


if __name__ == "__main__":
    main(sys.argv[1:])
