"""One test per pytorchvideo 0.1.5 trap that mutualnet_video handles."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pytorchvideo.models.x3d import create_x3d
from torch import nn

from mutualnet_video import compat
from mutualnet_video.core import SubnetConfig, use_config
from mutualnet_video.models import create_slimmable_slowfast, create_slimmable_x3d

ROOT = Path(__file__).parents[1]
X3D_KW = dict(input_clip_length=4, input_crop_size=64, model_num_class=10, depth_factor=1.0, dropout_rate=0.0)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_functional_tensor_alias_makes_pytorchvideo_transforms_import(monkeypatch):
    # Forget the alias and every pytorchvideo.transforms module (monkeypatch restores them).
    for name in list(sys.modules):
        if name == compat.FUNCTIONAL_TENSOR or name.startswith("pytorchvideo.transforms"):
            monkeypatch.delitem(sys.modules, name)
    with pytest.raises(ImportError, match="functional_tensor"):
        importlib.import_module("pytorchvideo.transforms")
    for name in list(sys.modules):  # drop what the failed import left half-initialised
        if name.startswith("pytorchvideo.transforms"):
            monkeypatch.delitem(sys.modules, name)
    compat.apply()
    compat.apply()  # idempotent
    transforms = importlib.import_module("pytorchvideo.transforms")
    assert hasattr(transforms, "UniformTemporalSubsample")
    assert sys.modules[compat.FUNCTIONAL_TENSOR] is sys.modules["torchvision.transforms._functional_tensor"]


def test_core_imports_only_torch():
    """Also: the versions table (tools/versions.py) imports none of the packages it lists."""
    code = ("import json, sys\nimport torch, torch.distributed, torch.nn.functional\nbefore = set(sys.modules)\n"
            "import mutualnet_video.core\neverything = sorted(sys.modules)\n"
            "from mutualnet_video.compat import versions_table\nversions_table()\n"
            "print(json.dumps([sorted(set(everything) - before), everything, sorted(sys.modules)]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    added, everything, with_table = json.loads(done.stdout.splitlines()[-1])
    listed = {name for name, _ in compat.PACKAGES} - {"torch", "numpy"}  # numpy: imported by torch
    assert not {m.split(".")[0] for m in with_table} & listed, "versions_table() imports a package it lists"
    outside = {m.split(".")[0] for m in added} - {"mutualnet_video"}
    assert not outside, f"import mutualnet_video.core imports {sorted(outside)} beyond torch"
    assert not {m.split(".")[0] for m in everything} & {"torchvision", "pytorchvideo", "fvcore", "iopath", "yaml", "av"}
    assert "mutualnet_video.compat" not in added and compat.FUNCTIONAL_TENSOR not in added  # no shim


@pytest.mark.parametrize("package", ["mutualnet_video.models", "mutualnet_video.data"])
def test_packages_that_import_pytorchvideo_apply_the_shim_first(monkeypatch, package):
    module = importlib.import_module(package)
    monkeypatch.delitem(sys.modules, compat.FUNCTIONAL_TENSOR)
    importlib.reload(module)  # runs the package's __init__ again
    assert sys.modules[compat.FUNCTIONAL_TENSOR] is sys.modules["torchvision.transforms._functional_tensor"]


def test_create_x3d_softmax_head_trap():
    stock = create_x3d(**X3D_KW)
    assert isinstance(stock.blocks[-1].activation, nn.Softmax)  # the trap
    slim = create_slimmable_x3d(**X3D_KW)
    assert slim.blocks[-1].activation is None
    assert not any(isinstance(m, nn.Softmax) for m in slim.modules())
    # the slim model returns logits: rows do not sum to one
    with torch.no_grad():
        out = slim.eval()(torch.randn(1, 3, 4, 64, 64))
    assert not torch.allclose(out.sum(dim=1), torch.ones(1))


def test_adaptive_head_pool_runs_where_the_stock_head_fails():
    torch.manual_seed(0)
    stock = create_x3d(**X3D_KW, head_activation=None).eval()
    slim = create_slimmable_x3d(**X3D_KW, frames=(4, 2), crops=(64, 32)).eval()
    slim.load_state_dict(stock.state_dict(), strict=True)
    small = torch.randn(1, 3, 2, 32, 32)
    with torch.no_grad():
        with pytest.raises(RuntimeError):
            stock(small)  # the AvgPool3d kernel was fixed for 4x64 at build time
        with use_config(slim, SubnetConfig(1.0, 2, 32)):
            assert slim(small).shape == (1, 10)


def test_slowfast_head_pools_become_adaptive():
    model = create_slimmable_slowfast(
        model_depth=18, stem_dim_outs=(16, 2), model_num_class=10, head_pool_kernel_sizes=((2, 2, 2), (8, 2, 2)),
        frames=(2, 1), crops=(64, 32),
    ).eval()
    pools = list(model.blocks[-2].pool)
    assert pools and all(isinstance(p, nn.AdaptiveAvgPool3d) for p in pools)
    with torch.no_grad(), use_config(model, SubnetConfig(1.0, 1, 32)):
        assert model([torch.randn(1, 3, 1, 32, 32), torch.randn(1, 3, 4, 32, 32)]).shape == (1, 10)


def test_net_init_reaches_slim_layers_and_block_final_bn():
    # Net.__init__ initialises isinstance(m, nn.Conv3d) convs and zero-inits BNs flagged
    # block_final_bn: our norm=SlimBatchNorm3d subclasses keep both behaviours.
    model = create_slimmable_x3d(**X3D_KW)
    final = [m for m in model.modules() if getattr(m, "block_final_bn", False)]
    assert final and all(torch.count_nonzero(m.weight) == 0 for m in final)
    others = [m for m in model.modules() if isinstance(m, nn.BatchNorm3d) and not getattr(m, "block_final_bn", False)]
    assert all(torch.all(m.weight == 1) for m in others)


def test_hard_coded_nn_layers_are_all_converted():
    # X3D builders hard-code nn.Conv3d (stem, blocks, SE, head) and create_res_block passes
    # conv_a/b/c=nn.Conv3d explicitly: converting module by module reaches all of them.
    from mutualnet_video.core import SlimmableModule
    from mutualnet_video.models import create_slimmable_resnet

    models = {
        "x3d": create_slimmable_x3d(**X3D_KW),
        "resnet": create_slimmable_resnet(model_depth=50, stem_dim_out=8, model_num_class=10,
                                          head_pool_kernel_size=(2, 1, 1)),
        "slowfast": create_slimmable_slowfast(model_depth=18, stem_dim_outs=(16, 2), model_num_class=10,
                                              head_pool_kernel_sizes=((2, 1, 1), (8, 1, 1))),
    }
    for family, model in models.items():
        weight_layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv3d, nn.BatchNorm3d,
                                                                                     nn.Linear))]
        assert weight_layers
        plain = [n for n, m in weight_layers if not isinstance(m, SlimmableModule)]
        assert not plain, f"{family}: {plain}"
    se = [m for m in models["x3d"].modules() if type(m).__name__ == "SqueezeExcitation"]
    assert se and all(isinstance(c, SlimmableModule) for m in se for c in m.block if isinstance(c, nn.Conv3d))


def _versions_main():
    import importlib.util

    spec = importlib.util.spec_from_file_location("_versions_tool", ROOT / "tools" / "versions.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_versions_table_reads_the_installed_distributions(capsys):
    import importlib.metadata
    import platform

    main = _versions_main()
    assert main(["--json", "--quiet"]) == 0
    captured = capsys.readouterr()
    versions = json.loads(captured.out)
    assert captured.err == ""
    assert versions["python"] == platform.python_version()
    assert versions["torch"] == importlib.metadata.version("torch") and torch.__version__.startswith(versions["torch"])
    assert [name for name, _ in compat.PACKAGES] == [k for k in versions if k not in ("python", "platform")]
    assert main([]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2:4] == ["| package | version | used for |", "|---|---|---|"] and len(lines) == 4 + 1 + len(compat.PACKAGES)
    table = compat.versions_table({"python": "3.11.7", "torch": "2.14.1", "decord": None}).splitlines()
    assert table[2:] == ["| python | 3.11.7 |  |", "| torch | 2.14.1 | required |",
                         "| decord | not installed | decoder: decord (required on x86_64) |"]


def test_versions_cli_bad_flag_is_one_line_and_status_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _versions_main()(["--bogus"])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.splitlines() == ["versions: unrecognized arguments: --bogus"]
