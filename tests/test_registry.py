"""The registry: every entrypoint's contract, forward/backward, input metadata and ``weights=``."""

from __future__ import annotations

import functools
import http.server
import inspect
import threading

import pytest
import torch
from model_checks import assert_full_width_equals
from pytorchvideo.models.resnet import create_resnet
from pytorchvideo.models.slowfast import create_slowfast
from pytorchvideo.models.x3d import create_x3d
from torch import nn

from mutualnet_video.checkpoint import CorruptCheckpointError
from mutualnet_video.core import dummy_input, get_space, use_config
from mutualnet_video.models import (
    DefaultCfg,
    UnknownModelError,
    create_model,
    get_default_cfg,
    get_model_cfg,
    get_model_entrypoint,
    list_models,
    register_model,
)

_FAMILY = {"x3d": "video", "resnet": "video", "slowfast": "video", "mobilenet": "classification",
           "resnet2d": "classification", "detection": "detection", "segmentation": "segmentation"}


def _family(name: str) -> str:
    """The family of an entrypoint, from its module (a new module must be added here)."""
    return _FAMILY[get_model_entrypoint(name).__module__.rsplit(".", 1)[-1]]


# Reduced inputs: a few classes, 2 or 1 frames, small crops (detectors: min sizes 64 / 32).
_REDUCED = {
    "video": dict(model_num_class=5, frames=(2, 1), crops=(32, 16)),
    "classification": dict(num_classes=5, crops=(32, 16)),
    "detection": dict(num_classes=3, crops=(64, 32)),
    "segmentation": dict(num_classes=3, crops=(32, 16)),
}
# Over a second each on a 2-core CPU (ResNet-50 FPN / dilated backbones, the detectors' heads).
_SLOW = {"mutual_fasterrcnn_mobilenet_v2_fpn", "mutual_fasterrcnn_resnet50_fpn", "mutual_deeplabv3_resnet50",
         "mutual_fcn_resnet50"}


def _maybe_slow(names):
    return [pytest.param(n, marks=pytest.mark.slow) if n in _SLOW else n for n in names]


def _loss(family: str, model: nn.Module, cfg) -> torch.Tensor:
    """A scalar of the model's output at ``cfg`` (batch 2), checking the output's shape."""
    gen = torch.Generator().manual_seed(0)
    if family == "detection":
        images = [torch.rand(3, 48, 64, generator=gen) for _ in range(2)]
        targets = [{"boxes": torch.tensor([[4.0, 4.0, 30.0, 30.0]]), "labels": torch.tensor([1])} for _ in range(2)]
        losses = model(images, targets)
        assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
        return sum(losses.values())
    x = dummy_input(get_space(model), cfg, batch=2)
    x = [t.normal_(generator=gen) for t in x] if isinstance(x, list) else x.normal_(generator=gen)
    out = model(x)
    if family == "segmentation":
        out = out["out"]
        assert out.shape == (2, 3, cfg.crop, cfg.crop), cfg
    else:
        assert out.shape == (2, 5), cfg
    return out.pow(2).mean()


@pytest.mark.parametrize("name", _maybe_slow(list_models()))
def test_every_entrypoint_runs_forward_backward_at_full_and_smallest(name):
    family = _family(name)
    torch.manual_seed(0)
    model = create_model(name, **_REDUCED[family]).train()
    space = get_space(model)
    nominal = get_model_cfg(name)
    assert get_default_cfg(model) == nominal
    assert space.is_video == (nominal.frames is not None) and space.slowfast_alpha == nominal.slowfast_alpha
    for cfg in (space.full(), space.smallest()):
        model.zero_grad(set_to_none=True)
        with use_config(model, cfg):
            loss = _loss(family, model, cfg)
            assert torch.isfinite(loss), cfg
            loss.backward()
        no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
        assert no_grad == [], f"{cfg}: no finite gradient for {no_grad[:5]}"


# -- the entrypoints' contract -------------------------------------------------------------
@pytest.mark.parametrize("name", list_models())
def test_entrypoint_signature_and_default_cfg(name):
    """Typed keyword-only arguments: the space, the class count, ``weights``; the DefaultCfg is
    the largest input of the default space."""
    params = inspect.signature(get_model_entrypoint(name)).parameters
    video = _family(name) == "video"
    assert all(p.kind in (p.KEYWORD_ONLY, p.VAR_KEYWORD) for p in params.values()), name
    assert all(p.annotation is not p.empty for p in params.values() if p.kind is p.KEYWORD_ONLY), name
    expected = {"width_range", "crops", "num_subnets", "widths", "weights"} | ({"frames"} if video else set())
    assert expected <= set(params)
    assert ("model_num_class" in params) == video and ("num_classes" in params) == (not video)
    assert params["weights"].default is None
    nominal = get_model_cfg(name)
    assert isinstance(nominal, DefaultCfg)
    assert nominal.crop == params["crops"].default[0]
    assert nominal.frames == (params["frames"].default[0] if video else None)
    mean, std = ((0.45,) * 3, (0.225,) * 3) if video else ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert nominal.mean == mean and nominal.std == std


def test_default_cfgs_of_the_paper_models():
    assert get_model_cfg("mutual_x3d_xs") == DefaultCfg(frames=4, crop=160, mean=(0.45,) * 3, std=(0.225,) * 3)
    assert (get_model_cfg("mutual_x3d_m").frames, get_model_cfg("mutual_x3d_m").crop) == (16, 224)
    assert (get_model_cfg("mutual_x3d_l").frames, get_model_cfg("mutual_x3d_l").crop) == (16, 312)
    slowfast = get_model_cfg("mutual_slowfast_r50")
    assert (slowfast.frames, slowfast.crop, slowfast.slowfast_alpha) == (8, 224, 4)
    assert get_model_cfg("mutual_resnet50").crop == 224 and get_model_cfg("mutual_resnet50").frames is None
    with pytest.raises(UnknownModelError, match="mutual_nope"):
        get_model_cfg("mutual_nope")


def test_detector_normalises_with_its_default_cfg():
    model = create_model("mutual_fasterrcnn_mobilenet_v2_fpn", num_classes=3, crops=(64, 32))
    nominal = get_default_cfg(model)
    assert tuple(model.transform.image_mean) == nominal.mean and tuple(model.transform.image_std) == nominal.std


def test_default_cfg_validates_and_registers_from_a_mapping():
    with pytest.raises(ValueError, match="std > 0"):
        DefaultCfg(crop=224, mean=(0.5,), std=(0.0,))
    with pytest.raises(ValueError, match="slowfast_alpha"):
        DefaultCfg(crop=224, mean=(0.5,), std=(0.5,), slowfast_alpha=4)  # alpha of a 2D model
    with pytest.raises(TypeError):
        DefaultCfg(224, (0.5,), (0.5,))  # keyword-only

    def mutual_x3d_m(**kwargs):  # the name of a registered entrypoint
        raise AssertionError("never built")

    with pytest.raises(ValueError, match="'mutual_x3d_m' is already registered"):
        register_model(mutual_x3d_m, default_cfg=dict(crop=224, mean=(0.5,), std=(0.5,)))
    assert get_default_cfg(nn.Linear(2, 2)) is None


# -- weights= ---------------------------------------------------------------------------
def _randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN affine and running stats, so eval-mode comparisons see every channel."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return model


# The stock PyTorchVideo builder call of each video entrypoint (PyTorchVideo's hub / the
# papers' architectures), at the reduced input: 2 frames, 32 px, head pools sized for it.
_X3D_SMALL = dict(input_clip_length=2, input_crop_size=32, head_activation=None)
_STOCK_VIDEO = {
    "mutual_x3d_xs": functools.partial(create_x3d, **_X3D_SMALL),
    "mutual_x3d_s": functools.partial(create_x3d, **_X3D_SMALL),
    "mutual_x3d_m": functools.partial(create_x3d, **_X3D_SMALL),
    "mutual_x3d_l": functools.partial(create_x3d, **_X3D_SMALL, depth_factor=5.0),
    "mutual_slow_r50": functools.partial(create_resnet, model_depth=50, stem_conv_kernel_size=(1, 7, 7),
                                         head_pool_kernel_size=(2, 1, 1)),
    "mutual_slowfast_r50": functools.partial(create_slowfast, model_depth=50,
                                             head_pool_kernel_sizes=((2, 1, 1), (8, 1, 1))),
}


def test_every_video_entrypoint_has_a_stock_reference():
    assert set(_STOCK_VIDEO) == {n for n in list_models() if _family(n) == "video"}


@pytest.mark.parametrize("name", sorted(_STOCK_VIDEO))
def test_video_entrypoint_loads_a_zoo_checkpoint_and_equals_the_stock_model(name, tmp_path):
    """Width 1.0 is the stock network: a PyTorchVideo model-zoo checkpoint (``{"model_state": ...}``)
    of the stock builder loads strictly through ``weights=`` and gives the same logits."""
    torch.manual_seed(0)
    stock = _randomize_bn(_STOCK_VIDEO[name](model_num_class=5)).eval()
    path = tmp_path / f"{name}.pyth"
    torch.save({"model_state": stock.state_dict(), "epoch": 196}, path)
    model = create_model(name, model_num_class=5, frames=(2, 1), crops=(32,), weights=str(path)).eval()
    assert list(model.state_dict()) == list(stock.state_dict())
    space = get_space(model)
    x = dummy_input(space, space.full(), batch=2)
    assert_full_width_equals(stock, model, [t.normal_() for t in x] if isinstance(x, list) else x.normal_())


def _mobilenet_v1(**kwargs) -> nn.Module:
    return create_model("mutual_mobilenet_v1", num_classes=5, crops=(32,), **kwargs)


def test_weights_are_strict_and_weights_only(tmp_path):
    wrong = tmp_path / "seven_classes.pth"
    torch.save(create_model("mutual_mobilenet_v1", num_classes=7, crops=(32,)).state_dict(), wrong)
    with pytest.raises(RuntimeError, match=r"weights .*seven_classes\.pth does not match .*shape mismatch: classifier"):
        _mobilenet_v1(weights=str(wrong))
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        _mobilenet_v1(weights=str(tmp_path / "absent.pth"))

    class Evil:
        def __reduce__(self):
            return (print, ("code ran",))

    evil = tmp_path / "evil.pth"
    torch.save({"model": _mobilenet_v1().state_dict(), "payload": Evil()}, evil)
    with pytest.raises(CorruptCheckpointError, match="evil.pth: holds more than tensors"):
        _mobilenet_v1(weights=str(evil))


def test_weights_from_a_url(tmp_path, monkeypatch):
    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path / "cache"))
    served = tmp_path / "served"
    served.mkdir()
    source = _randomize_bn(_mobilenet_v1()).eval()
    torch.save({"model": source.state_dict()}, served / "mobilenet_v1.pth")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/mobilenet_v1.pth"
        model = _mobilenet_v1(weights=url).eval()
    finally:
        server.shutdown()
        thread.join()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), source(x))
