"""compare_methods / tools/compare_methods.py: every method trained and evaluated alike, on toy data."""

from __future__ import annotations

import csv
import json
import logging
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from mutualnet_video.core import ConfigSpace, SlimmableModule, SubnetConfig, current_config
from mutualnet_video.engine.compare import (
    METHODS,
    RECORD_KEYS,
    compare_methods,
    format_accuracy_table,
    format_training_table,
    plan_runs,
)
from mutualnet_video.engine.config import default_config
from mutualnet_video.evaluation import count_flops, count_params
from mutualnet_video.testing import create_toy_slimnet

ROOT = Path(__file__).resolve().parents[1]
TOY = "mutualnet_video.testing"
TAGS = ["w1000_f4_c32", "w0750_f4_c24", "w0500_f2_c32", "w0500_f2_c24"]
FULL = "w1000_f4_c32"
ITERS, BATCH, VAL_VIDEOS = 8, 2, 6
# ToySlimNet(channels=16): the first conv's outputs and the classifier's inputs at each width
# (make_divisible(c * w, 8): 16 * 0.75 = 12 rounds up to 16, 32 * 0.75 = 24, 16 * 0.5 = 8)
SLICED = {1.0: (16, 32), 0.75: (16, 24), 0.5: (8, 16)}


def _tree(out: Path | str, **sections) -> dict:
    tree = dict(
        model={"_target_": f"{TOY}.create_toy_slimnet", "channels": 16, "num_subnets": 3},
        data={"train": {"_target_": f"{TOY}.toy_clip_dataset", "num_videos": 8},
              "val": {"_target_": f"{TOY}.toy_clip_dataset", "split": "val", "num_videos": VAL_VIDEOS},
              "batch_size": BATCH, "num_workers": 0},
        optim={"lr": 0.05, "max_iters": ITERS, "warmup_iters": 2, "weight_decay": 1e-3},
        train={"progress": False, "tensorboard": False, "log_period": 2, "device": "cpu", "checkpoint_period": 100},
        eval={"calib_batches": 2, "configs": list(TAGS)},
        output_dir=str(out),
    )
    for key, value in sections.items():
        tree[key] = {**tree[key], **value} if isinstance(value, dict) else value
    return tree


def _toy() -> nn.Module:
    return create_toy_slimnet(channels=16, num_subnets=3)


class _Recorder:
    """``on_train_start``: keeps each trainer's model, its weights before training, and the
    configuration and input shape of every training forward."""

    def __init__(self) -> None:
        self.models: dict[tuple, nn.Module] = {}
        self.start: dict[tuple, dict[str, torch.Tensor]] = {}
        self.forwards: dict[tuple, list[tuple[SubnetConfig | None, tuple]]] = {}

    def __call__(self, run, trainer) -> None:
        key = (run.method, run.seed, run.tag)
        self.models[key] = trainer.model
        self.start[key] = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        seen = self.forwards[key] = []

        def hook(module, args):
            if module.training:  # training forwards only (calibration and evaluation run in eval mode)
                x = args[0]
                shape = [tuple(t.shape[2:]) for t in x] if isinstance(x, list) else tuple(x.shape[2:])
                seen.append((current_config(module), shape))

        trainer.model.register_forward_pre_hook(hook)


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the module fixture runs before conftest's per-test one
    try:
        out = tmp_path_factory.mktemp("compare")
        recorder = _Recorder()
        result = compare_methods(default_config(**_tree(out / "unused")), output_dir=out, seeds=[0, 1],
                                 on_train_start=recorder, command="pytest")
        yield out, result, recorder
    finally:
        torch.set_num_threads(threads)


def _by(records, **match):
    return [r for r in records if all(r[k] == v for k, v in match.items())]


def test_every_method_is_evaluated_at_the_same_configurations_on_the_same_clips(compared):
    _, result, _ = compared
    records = result.records
    assert {r["method"] for r in records} == set(METHODS)
    for seed in (0, 1):
        for method in ("mutual", "width_only", "finetune", "independent"):
            assert sorted(r["config"] for r in _by(records, method=method, seed=seed)) == sorted(TAGS), method
        for method in ("single", "boost"):
            assert [r["config"] for r in _by(records, method=method, seed=seed)] == [FULL]
    assert len(records) == 2 * (4 * 4 + 2)
    assert {r["videos"] for r in records} == {VAL_VIDEOS}
    assert all(0 <= r["top1"] <= r["top5"] <= 100 for r in records)
    assert all(r["calibrated"] == (r["method"] != "independent") for r in records)
    toy = _toy()
    for tag in TAGS:  # one cost per configuration, whatever the method: the model's count_flops there
        want = count_flops(toy, SubnetConfig.from_tag(tag)) / 1e9
        got = [r["gflops"] for r in _by(records, config=tag)]
        assert got == [pytest.approx(want)] * len(got) and len(got) == 2 * (6 if tag == FULL else 4)
    gflops = [count_flops(toy, SubnetConfig.from_tag(t)) for t in TAGS]
    assert gflops == sorted(gflops, reverse=True) and gflops[0] > gflops[-1]


def test_iterations_per_model_and_bn_calibrated_per_configuration(compared):
    _, result, recorder = compared
    iters = {(t["method"], t["seed"], t["config"]): t["iters"] for t in result.training}
    assert len(iters) == 2 * (len(METHODS) - 1 + len(TAGS))
    assert {v for (m, _, _), v in iters.items() if m != "finetune"} == {ITERS}
    assert {v for (m, _, _), v in iters.items() if m == "finetune"} == {ITERS // 4}
    assert all(r["iters"] == iters[r["method"], r["seed"], r["config"] if r["method"] == "independent" else None]
               for r in result.records)
    for key, forwards in recorder.forwards.items():
        subnets = 3 if key[0] in ("mutual", "width_only", "boost", "finetune") else 1
        assert len(forwards) == subnets * iters[key], key
    from mutualnet_video.core import SlimBatchNorm

    bns = [m for m in recorder.models["mutual", 0, None].modules() if isinstance(m, SlimBatchNorm)]
    assert bns and all(bn.has_stats(SubnetConfig.from_tag(t)) for t in TAGS for bn in bns)


def test_each_method_trains_the_sub_networks_it_claims(compared):
    _, _, recorder = compared
    space = ConfigSpace((0.5, 1.0), frames=(4, 2), crops=(32, 24))
    full = space.full()

    def configs(method, tag=None):
        return [cfg for cfg, _ in recorder.forwards[method, 0, tag]]

    mutual = configs("mutual")
    assert min(c.width for c in mutual) == 0.5 and {(c.frames, c.crop) for c in mutual} - {(4, 32)}
    width_only = configs("width_only")
    assert {(c.frames, c.crop) for c in width_only} == {(4, 32)} and min(c.width for c in width_only) == 0.5
    assert len({c.width for c in width_only}) > 2
    boost = configs("boost")
    assert min(c.width for c in boost) >= 0.9 and all(space.contains(c) for c in boost)
    assert set(configs("single")) == {full}
    assert all(space.contains(c) for c in configs("finetune"))
    for tag in TAGS:  # a static network: no configuration to switch; its own input size
        cfg = SubnetConfig.from_tag(tag)
        assert set(recorder.forwards["independent", 0, tag]) == {(None, (cfg.frames, cfg.crop, cfg.crop))}


def test_independent_models_are_static_networks_of_the_sliced_size(compared):
    _, result, recorder = compared
    toy = _toy()
    full_params = sum(p.numel() for p in toy.parameters())
    for tag in TAGS:
        cfg = SubnetConfig.from_tag(tag)
        model = recorder.models["independent", 0, tag]
        assert not any(isinstance(m, SlimmableModule) for m in model.modules())
        first, proj = model.blocks[0], model.proj
        assert type(first) is nn.Conv3d and type(proj) is nn.Linear
        out, feats = SLICED[cfg.width]
        assert tuple(first.weight.shape) == (out, 3, 1, 3, 3)
        assert tuple(model.blocks[3].weight.shape) == (out, 1, 3, 3, 3) and model.blocks[3].groups == out
        assert tuple(proj.weight.shape) == (5, feats)
        params = sum(p.numel() for p in model.parameters())
        assert params == count_params(toy, cfg) == _by(result.records, method="independent", seed=0,
                                                        config=tag)[0]["params"]
        assert (params < full_params) == (cfg.width < 1.0)
    # the full-size static network is the single run's network: same init, data and updates
    single = recorder.models["single", 0, None].state_dict()
    static = recorder.models["independent", 0, FULL].state_dict()
    assert static.keys() <= single.keys()
    for k, v in static.items():
        torch.testing.assert_close(v, single[k], rtol=1e-4, atol=1e-5, msg=k)
    slim = _by(result.records, method="mutual", seed=0)
    assert {r["config"]: r["params"] for r in slim} == {
        r["config"]: r["params"] for r in _by(result.records, method="independent", seed=0)}


def test_finetune_starts_from_the_single_runs_final_weights(compared):
    out, result, recorder = compared
    for seed in (0, 1):
        single_final = torch.load(out / "single" / str(seed) / "model_final.pth", weights_only=False)["model"]
        start = recorder.start["finetune", seed, None]
        assert start.keys() == single_final.keys()
        assert all(torch.equal(start[k], single_final[k]) for k in start)
        fresh = recorder.start["mutual", seed, None]  # what a fresh model of this seed holds
        assert any(not torch.equal(start[k], fresh[k]) for k in start if start[k].is_floating_point())
        trained = recorder.models["finetune", seed, None].state_dict()
        assert any(not torch.equal(start[k], trained[k]) for k in start if start[k].is_floating_point())
    assert {t["init_from"] for t in result.training if t["method"] == "finetune"} == {"single"}


def test_training_gflops_follow_the_stated_convention(compared):
    _, result, _ = compared
    toy = _toy()
    space = ConfigSpace((0.5, 1.0), frames=(4, 2), crops=(32, 24), num_subnets=3)
    cost = {(t["method"], t["seed"], t["config"]): t["train_gflops"] for t in result.training}
    full = count_flops(toy, space.full())
    assert cost["single", 0, None] == pytest.approx(3 * ITERS * BATCH * full / 1e9)
    for tag in TAGS:
        want = 3 * ITERS * BATCH * count_flops(toy, SubnetConfig.from_tag(tag)) / 1e9
        assert cost["independent", 0, tag] == pytest.approx(want)
    for seed in (0, 1):  # the sandwich draws replayed from the trainer's seeding (train.seed + 1)
        generator = torch.Generator().manual_seed(seed + 1)
        draws = [c for _ in range(ITERS) for c in space.sandwich(generator)]
        want = 3 * BATCH * sum(count_flops(toy, c) for c in draws) / 1e9
        assert cost["mutual", seed, None] == pytest.approx(want)


def test_files_tables_and_per_model_folders(compared):
    out, result, _ = compared
    payload = json.loads((out / "comparison.json").read_text())
    assert {"records", "training", "command", "config", "configs", "methods", "seeds", "budget"} <= set(payload)
    assert payload["configs"] == TAGS and payload["seeds"] == [0, 1] and payload["command"] == "pytest"
    assert payload["config"]["model"]["_target_"] == f"{TOY}.create_toy_slimnet"
    assert all(set(RECORD_KEYS) <= set(r) for r in payload["records"]) and payload["records"] == result.records
    assert all({"method", "seed", "wall_s", "iters", "train_gflops"} <= set(t) and t["wall_s"] > 0
               for t in payload["training"])
    with open(out / "comparison.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(result.records) and list(rows[0]) == list(RECORD_KEYS)
    assert (out / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = format_accuracy_table(result.records)
    assert all(m in table for m in METHODS) and "±" in table and all(t in table for t in TAGS)
    costs = format_training_table(result.training)
    assert "mutual (1 run) vs independent (4 runs)" in costs
    assert (out / "comparison.txt").read_text().startswith(table)
    for seed in (0, 1):
        for folder in [out / m / str(seed) for m in METHODS if m != "independent"] + [
                out / "independent" / str(seed) / t for t in TAGS]:
            assert (folder / "model_final.pth").is_file() and (folder / "eval.json").is_file(), folder
            saved = yaml.safe_load((folder / "config.yaml").read_text())
            assert saved["train"]["seed"] == seed and saved["train"]["eval_period"] == 0


def test_flops_budget_gives_cheaper_models_more_iterations(tmp_path):
    cfg = default_config(**_tree(tmp_path / "unused", optim={"max_iters": 4, "warmup_iters": 1}))
    result = compare_methods(cfg, output_dir=tmp_path, methods="mutual,independent,single,width_only",
                             budget="flops", max_iters_factor=50.0)
    training = {(t["method"], t["config"]): t for t in result.training}
    reference = training["mutual", None]["train_gflops"]
    assert training["mutual", None]["iters"] == 4
    assert "capped" not in format_training_table(result.training)
    toy = _toy()
    flops = {tag: count_flops(toy, SubnetConfig.from_tag(tag)) for tag in TAGS}
    iters = {tag: training["independent", tag]["iters"] for tag in TAGS}
    # a mutual iteration runs the full network and two smaller ones: alone, the full one gets more
    assert training["single", None]["iters"] == iters[FULL] > 4
    by_cost = sorted(TAGS, key=lambda t: flops[t])
    assert [iters[t] for t in by_cost] == sorted(iters.values(), reverse=True) and iters[by_cost[0]] > iters[FULL]
    for (method, tag), t in training.items():  # equal training FLOPs, to within one iteration's cost
        per_iter = 3 * BATCH * flops[tag or FULL] / 1e9
        if method in ("single", "independent"):
            assert abs(t["train_gflops"] - reference) <= per_iter / 2 + 1e-12, (method, tag)
            assert t["uncapped_iters"] == t["iters"]
    # width_only runs its smaller sub-networks at the full frames and crop: no cheaper per iteration
    width_only = training["width_only", None]
    assert width_only["iters"] <= 4 and width_only["uncapped_iters"] == width_only["iters"]
    assert abs(width_only["train_gflops"] - reference) <= 3 * BATCH * 3 * flops[FULL] / 1e9


def test_flops_budget_plan_by_hand_and_its_cap():
    space = ConfigSpace((0.5, 1.0), frames=(4, 2), crops=(32, 24), num_subnets=1)  # sandwich = [full]
    small = SubnetConfig(0.5, 2, 24)
    costs = {space.full(): 8_000_000_000, small: 1_000_000_000}
    common = dict(space=space, configs=[space.full(), small], seeds=[3], base_iters=10, clips_per_iter=2,
                  flops_fn=costs.__getitem__)
    runs = plan_runs(methods=["mutual", "independent", "single", "finetune"], budget="flops", max_iters_factor=4,
                     **common)
    got = {(r.method, r.tag): (r.iters, r.uncapped_iters) for r in runs}
    assert got == {("mutual", None): (10, None), ("independent", space.full().tag): (10, 10),
                   ("independent", small.tag): (40, 80), ("single", None): (10, 10), ("finetune", None): (2, None)}
    assert [r.method for r in runs] == ["mutual", "independent", "independent", "single", "finetune"]
    text = format_training_table([{"method": r.method, "seed": r.seed, "config": r.tag, "iters": r.iters,
                                   "uncapped_iters": r.uncapped_iters, "wall_s": 1.0, "train_gflops": 1.0}
                                  for r in runs])
    assert f"capped at 40 iters for independent {small.tag} seed 3 (asked 80)" in text
    plain = plan_runs(methods=["independent", "finetune"], **common)  # budget iters; finetune adds single
    assert [(r.method, r.iters) for r in plain] == [("independent", 10), ("independent", 10), ("single", 10),
                                                    ("finetune", 2)]


def test_slowfast_two_pathway_model(tmp_path):
    tree = _tree(tmp_path / "unused", model={"_target_": f"{TOY}.toy_slowfast", "num_classes": 5},
                 eval={"configs": None}, optim={"max_iters": 2, "warmup_iters": 0})
    tree["model"].pop("channels"), tree["model"].pop("num_subnets")
    for split in ("train", "val"):
        tree["data"][split]["frames"] = 8  # the full clip: alpha x 4 frames
    recorder = _Recorder()
    result = compare_methods(default_config(**tree), output_dir=tmp_path, methods=["mutual", "independent"],
                             on_train_start=recorder)
    tags = [r["config"] for r in result.records if r["method"] == "mutual"]
    assert tags == ["w1000_f4_c32", "w0750_f4_c32", "w0500_f2_c24"]  # default_eval_configs: full, middle, smallest
    assert sorted(r["config"] for r in result.records if r["method"] == "independent") == sorted(tags)
    static = recorder.models["independent", 0, "w0500_f2_c24"]
    assert not any(isinstance(m, SlimmableModule) for m in static.modules())
    assert static.slow_conv.weight.shape[0] == 8 and static.fast_conv.weight.shape[0] == 8  # Fast keeps its width
    assert [shape for _, shape in recorder.forwards["independent", 0, "w0500_f2_c24"]] == [
        [(2, 24, 24), (4, 24, 24)]] * 2  # slow and fast pathways of its configuration, two iterations


def _write_yaml(path: Path, tree: dict) -> Path:
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tools" / "compare_methods.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def _main(monkeypatch, argv: list[str]) -> int:
    """``tools/compare_methods.py``'s ``main`` in this process; the logger levels it lowers for the
    run are back as they were after it."""
    monkeypatch.syspath_prepend(str(ROOT / "tools"))
    import compare_methods as cli

    names = ("mutualnet_video.engine.trainer", "mutualnet_video.engine.hooks", "fvcore.common.checkpoint")
    levels = {n: logging.getLogger(n).level for n in names}
    code = cli.main(argv)
    assert {n: logging.getLogger(n).level for n in names} == levels
    return code


def test_cli_bad_values_exit_2_with_one_line(tmp_path, capsys, monkeypatch):
    config = _write_yaml(tmp_path / "toy.yaml", _tree(tmp_path / "unused"))
    common = ["--config", str(config), "--output", str(tmp_path / "out")]
    proc = _cli(*common, "optim.lr=-1")  # the real process: nothing else on stderr (no import-time warnings)
    assert proc.returncode == 2 and proc.stderr == "compare_methods: optim.lr: must be > 0, got -1\n", proc.stderr
    for extra, message in ((["eval.configs=[w0300_f4_c32]"], "compare_methods: eval.configs: w0300_f4_c32: width 0.3"),
                           (["--methods", "mutual,bogus"], "compare_methods: methods: unknown 'bogus'"),
                           (["--seeds", "0"], "compare_methods: --seeds: must be >= 1")):
        try:
            assert _main(monkeypatch, [*common, *extra]) == 2
        except SystemExit as exit_info:  # a flag error: argparse's exit, one line
            assert exit_info.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(message), err
    assert not (tmp_path / "out").exists()  # nothing trained


def test_cli_in_process(tmp_path, capsys, monkeypatch):
    config = _write_yaml(tmp_path / "toy.yaml", _tree(tmp_path / "unused", optim={"max_iters": 2, "warmup_iters": 0}))
    rc = _main(monkeypatch, ["--config", str(config), "--output", str(tmp_path / "out"), "--methods",
                             "single,independent", "--seeds", "2", "eval.configs=[w1000_f4_c32,w0500_f2_c24]"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "single" in printed and "independent" in printed and "±" in printed and "training cost" in printed
    payload = json.loads((tmp_path / "out" / "comparison.json").read_text())
    assert payload["seeds"] == [0, 1] and payload["methods"] == ["independent", "single"]
    assert "--methods single,independent" in payload["command"] and payload["config_file"] == str(config)
    assert math.isclose(sum(t["iters"] for t in payload["training"]), 2 * 3 * 2)


@pytest.mark.slow
def test_cli_on_the_instant_config(tmp_path):
    data = tmp_path / "synthetic"
    proc = _cli(
        "--config", str(ROOT / "configs" / "instant" / "x3d_synthetic.yaml"), "--output", str(tmp_path / "out"),
        f"data.synthetic.root={data}", f"data.train.data_path={data}", f"data.val.data_path={data}",
        "data.synthetic.train_per_class=3", "data.synthetic.val_per_class=2", "data.batch_size=4",
        "optim.max_iters=8", "optim.warmup_iters=1", "eval.calib_batches=1", "train.log_period=4",
        "eval.configs=[w1000_f8_c32,w0750_f8_c24,w0500_f4_c32,w0500_f4_c24]", timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    payload = json.loads((tmp_path / "out" / "comparison.json").read_text())
    assert {r["method"] for r in payload["records"]} == set(METHODS)
    assert {r["videos"] for r in payload["records"]} == {8}
    assert "[1/9] mutual seed 0: iter 4/8" in proc.stderr and "ETA" in proc.stderr
    assert (tmp_path / "out" / "comparison.png").is_file()
