"""Hydra / OmegaConf: a PyTorchVideo-trainer model config switches to MutualNet by its ``_target_`` alone.

The three model configs of ``pytorchvideo_trainer/conf/module/model`` (x3d_xs, slowfast_r50,
slow_r50), written here as that trainer writes them and read with ``OmegaConf.create``, are
instantiated twice through ``hydra.utils.instantiate(cfg, _convert_="all")``: with the stock
``_target_`` (the reference) and with ours. The stock state dict loads strictly into ours, and in
eval mode both give the same output on the same input (``torch.testing.assert_close`` defaults
for float32: rtol 1.3e-6, atol 1e-5). X3D-XS runs at its nominal 4x160 input in the default
suite; Slow / SlowFast R50 compare every block but the head on a small input there (the stock
heads pool with a fixed 8x7x7 kernel, so only the nominal 8x224 input runs them), and the whole
network at 8x224 under ``-m slow``.

Our own configs (``configs/**/*.yaml``) are plain YAML trees of ``_target_`` nodes: every one
loads with ``OmegaConf.load``; following ``_base_`` with ``OmegaConf.merge`` gives the same
``model`` node as :func:`mutualnet_video.engine.load_config`, and Hydra builds from it the model
our loader builds.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

hydra_utils = pytest.importorskip("hydra.utils")
omegaconf = pytest.importorskip("omegaconf")
OmegaConf = omegaconf.OmegaConf

ROOT = Path(__file__).resolve().parents[1]

# pytorchvideo_trainer/pytorchvideo_trainer/conf/module/model/<name>.yaml, without its _target_ line
TRAINER_MODEL_CONFIGS = {
    "x3d_xs": (
        "pytorchvideo.models.x3d.create_x3d",
        "mutualnet_video.models.create_slimmable_x3d",
        """
input_channel: 3
model_num_class: 400
dropout_rate: 0.5
input_clip_length: 4
input_crop_size: 160
depth_factor: 2.2
head_activation: null
""",
    ),
    "slowfast_r50": (
        "pytorchvideo.models.slowfast.create_slowfast",
        "mutualnet_video.models.create_slimmable_slowfast",
        """
input_channels: [3,3]
model_depth: 50
model_num_class: 400
dropout_rate: 0.5
slowfast_fusion_conv_kernel_size: [7, 1, 1]
""",
    ),
    "slow_r50": (
        "pytorchvideo.models.resnet.create_resnet",
        "mutualnet_video.models.create_slimmable_resnet",
        """
input_channel: 3
model_depth: 50
model_num_class: 400
dropout_rate: 0.5
stem_conv_kernel_size: [1, 7, 7]
head_pool_kernel_size: [8, 7, 7]
""",
    ),
}


def _instantiate(target: str, body: str) -> torch.nn.Module:
    cfg = OmegaConf.create(f"_target_: {target}\n{body}")
    return hydra_utils.instantiate(cfg, _convert_="all").eval()


def _pair(name: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(stock, ours) with the stock weights loaded strictly into ours."""
    stock_target, our_target, body = TRAINER_MODEL_CONFIGS[name]
    torch.manual_seed(0)
    stock = _instantiate(stock_target, body)
    torch.manual_seed(1)  # other initial weights: equality below comes from the load, not the seed
    ours = _instantiate(our_target, body)
    stock_sd, our_sd = stock.state_dict(), ours.state_dict()
    assert list(our_sd) == list(stock_sd)
    assert {k: v.shape for k, v in our_sd.items()} == {k: v.shape for k, v in stock_sd.items()}
    ours.load_state_dict(stock_sd, strict=True)
    return stock, ours


def _inputs(name: str, *, frames: int, crop: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    if name == "slowfast_r50":  # alpha 4: the Fast pathway sees 4x the frames
        return [torch.randn(1, 3, frames, crop, crop, generator=g), torch.randn(1, 3, 4 * frames, crop, crop, generator=g)]
    return torch.randn(1, 3, frames, crop, crop, generator=g)


def _copy(x):
    return [t.clone() for t in x] if isinstance(x, list) else x.clone()


def _run(model: torch.nn.Module, x, *, blocks: slice = slice(None)):
    with torch.no_grad():
        for block in model.blocks[blocks]:
            x = block(x)
    return x


def test_the_trainer_configs_name_the_stock_builders_our_loader_maps():
    """Each stock ``_target_`` above is the builder our config validation tells users to switch from."""
    from mutualnet_video.engine.config import _STOCK_TO_OURS

    for stock, ours, _ in TRAINER_MODEL_CONFIGS.values():
        assert _STOCK_TO_OURS[stock.rsplit(".", 1)[-1]] == ours


def test_x3d_xs_from_the_trainer_config_equals_the_stock_model():
    stock, ours = _pair("x3d_xs")
    x = _inputs("x3d_xs", frames=4, crop=160)
    expected = _run(stock, _copy(x))
    assert expected.shape == (1, 400)
    torch.testing.assert_close(_run(ours, _copy(x)), expected)
    # a model that is not the stock one fails this comparison
    ours.blocks[-1].proj.bias.data[0] += 1.0
    with pytest.raises(AssertionError):
        torch.testing.assert_close(_run(ours, _copy(x)), expected)


@pytest.mark.parametrize("name", ["slow_r50", "slowfast_r50"])
def test_r50_trunk_from_the_trainer_config_equals_the_stock_model(name):
    """The stem and the four stages (not the fixed 8x7x7 head pools) on a 2x64 input: the stock features."""
    stock, ours = _pair(name)
    x = _inputs(name, frames=2, crop=64)
    trunk = slice(0, 5)  # blocks: stem, res2..res5, then the head (SlowFast: the pathway pools, then the head)
    expected = _run(stock, _copy(x), blocks=trunk)
    got = _run(ours, _copy(x), blocks=trunk)
    torch.testing.assert_close(got, expected)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["slow_r50", "slowfast_r50"])
def test_r50_from_the_trainer_config_equals_the_stock_model_at_8x224(name):
    stock, ours = _pair(name)
    x = _inputs(name, frames=8, crop=224)
    expected = _run(stock, _copy(x))
    assert expected.shape == (1, 400)
    torch.testing.assert_close(_run(ours, _copy(x)), expected)


# --------------------------------------------------------------------------------------
# our own configs through OmegaConf
# --------------------------------------------------------------------------------------
CONFIGS = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "configs").rglob("*.yaml"))
RUNNABLE = [c for c in CONFIGS if not Path(c).name.startswith("_")]  # _base_.yaml: a fragment, no model


def _omegaconf_tree(path: Path):
    """``OmegaConf.load(path)`` with its ``_base_`` files merged under it (``OmegaConf.merge``)."""
    node = OmegaConf.load(path)
    bases = node.pop("_base_", None)
    if bases is None:
        return node
    bases = [bases] if isinstance(bases, str) else list(bases)
    return OmegaConf.merge(*(_omegaconf_tree(path.parent / b) for b in bases), node)


def test_every_config_file_is_found():
    assert len(CONFIGS) >= 9 and "configs/instant/x3d_synthetic.yaml" in CONFIGS


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_file_loads_through_omegaconf(name):
    """Plain YAML: no interpolation, no Hydra-only syntax; the values PyYAML reads."""
    import yaml

    plain = OmegaConf.load(ROOT / name)
    assert isinstance(plain, omegaconf.DictConfig)
    assert OmegaConf.to_container(plain) == yaml.safe_load((ROOT / name).read_text())


@pytest.mark.parametrize("name", RUNNABLE)
def test_config_through_omegaconf_equals_our_loader(name):
    from mutualnet_video.engine import load_config

    path = ROOT / name
    tree = OmegaConf.to_container(_omegaconf_tree(path))
    ours = load_config(str(path), resolve_targets=False)
    for section, value in tree.items():  # every key OmegaConf read is the value our loader validated
        expected = {k: ours[section][k] for k in value} if isinstance(value, dict) else ours[section]
        if section == "model":
            assert ours["model"]["weights"] is None and "weights" not in value
        assert value == expected, section


def _build_both(name: str):
    from mutualnet_video.engine import load_config
    from mutualnet_video.engine.config import build_model

    path = ROOT / name
    node = _omegaconf_tree(path).model
    torch.manual_seed(0)
    from_hydra = hydra_utils.instantiate(node, _convert_="all")
    torch.manual_seed(0)
    from_ours = build_model(load_config(str(path)))
    return from_hydra, from_ours


@pytest.mark.parametrize("name", RUNNABLE)
def test_hydra_builds_the_model_our_loader_builds(name):
    """Same seed, same builder, same kwargs: the same architecture, weights and configuration space."""
    from mutualnet_video.core import get_space

    from_hydra, from_ours = _build_both(name)
    a, b = from_hydra.state_dict(), from_ours.state_dict()
    assert list(a) == list(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    assert get_space(from_hydra) == get_space(from_ours) is not None
