"""Budget tables: Pareto front, queries, files, plots, latency and the evaluator."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from mutualnet_video.checkpoint import CheckpointMismatchError, load_weights, save_weights
from mutualnet_video.core import SubnetConfig, clip_for_config, current_config, get_space, set_config, use_config
from mutualnet_video.engine.inference import calibrated_path
from mutualnet_video.evaluation.budgets import (
    BudgetRecord,
    format_table,
    load_budgets,
    mark_pareto,
    measure_latency,
    pareto_front,
    plot_budgets,
    save_budgets,
    select_config,
    write_report,
)
from mutualnet_video.evaluation.calibration import NotCalibratedError, calibrate_bn
from mutualnet_video.evaluation.evaluator import evaluate_configs
from mutualnet_video.evaluation.flops import count_flops, count_params
from mutualnet_video.export import export_subnet
from mutualnet_video.testing import toy_slowfast, toy_x3d


def _rec(width, frames, crop, gflops, top1, *, views="1x1", latency=None, top5=None):
    n = 1 if views == "1x1" else 30
    return BudgetRecord(width=width, frames=frames, crop=crop, views=views, gflops_per_view=gflops / n,
                        gflops_per_video=gflops, params=int(width * 1e6), top1=top1,
                        top5=top1 + 10 if top5 is None else top5, latency_ms=latency)


TABLE = [
    _rec(1.0, 16, 224, 4.7, 75.0, latency=40.0),     # A front (top)
    _rec(1.0, 16, 160, 2.4, 72.0, latency=21.0),     # B front
    _rec(0.75, 16, 224, 2.4, 70.0, latency=22.0),    # C same cost as B, less accurate -> off
    _rec(0.75, 8, 160, 1.2, 72.0, latency=12.0),     # D as accurate as B, cheaper -> front, B off
    _rec(0.5, 8, 160, 0.6, 66.0, latency=7.0),       # E front
    _rec(0.5, 8, 160, 0.6, 66.0, views="1x1", latency=7.5),  # F exact tie with E -> first kept
    _rec(0.25, 4, 128, 0.9, 60.0, latency=6.0),      # G dominated by E (more costly, less accurate)
    _rec(0.25, 4, 128, 0.2, 55.0, latency=3.0),      # H front (cheapest)
]


def test_pareto_front_hand_made_table():
    front = pareto_front(TABLE)
    assert [TABLE.index(r) for r in front] == [7, 4, 3, 0]  # H, E, D, A sorted by cost
    marked = mark_pareto(TABLE)
    assert [r.pareto for r in marked] == [True, False, False, True, True, False, False, True]
    assert [dataclasses.replace(r, pareto=False) for r in marked] == TABLE
    by_latency = pareto_front(TABLE, cost="latency_ms")  # G (6 ms, 60%) joins the latency front
    assert [TABLE.index(r) for r in by_latency] == [7, 6, 4, 3, 0]
    with pytest.raises(ValueError, match="cost must be one of"):
        pareto_front(TABLE, cost="joules")


def test_pareto_front_skips_records_without_the_cost():
    table = [_rec(1.0, 8, 160, 1.0, 70.0), _rec(0.5, 8, 160, 0.5, 60.0, latency=5.0)]
    assert pareto_front(table, cost="latency_ms") == [table[1]]


def test_select_config():
    assert select_config(TABLE, max_gflops=10) is TABLE[0]
    assert select_config(TABLE, max_gflops=2.4) is TABLE[3]   # D: 72% for 1.2 beats B's 72% for 2.4
    assert select_config(TABLE, max_gflops=1.0) is TABLE[4]   # E (not its tie F)
    assert select_config(TABLE, max_gflops=0.25) is TABLE[7]
    assert select_config(TABLE, max_latency_ms=10) is TABLE[4]
    assert select_config(TABLE, max_gflops=10, max_latency_ms=6.5) is TABLE[6]
    assert select_config(TABLE) is TABLE[0]
    with pytest.raises(ValueError, match=r"cheapest is \(width=0.25, frames=4, crop=128\) with 1x1 views at 0.2 GFLOPs"):
        select_config(TABLE, max_gflops=0.1)
    with pytest.raises(ValueError, match="3 ms per video"):
        select_config(TABLE, max_latency_ms=1)
    with pytest.raises(ValueError, match="no latency_ms values"):
        select_config([_rec(1.0, 8, 160, 1.0, 70.0)], max_latency_ms=5)
    with pytest.raises(ValueError, match="empty"):
        select_config([], max_gflops=1)


def test_json_and_csv_round_trip(tmp_path):
    table = mark_pareto(TABLE + [_rec(0.5, None, 192, 0.3, 64.0)])  # a 2D record (frames=None)
    json_path, csv_path = save_budgets(table, tmp_path / "out", meta={"model": "toy"})
    assert load_budgets(json_path) == table
    assert load_budgets(csv_path) == table
    assert select_config(json_path, max_gflops=1.0) == table[4]
    assert not list((tmp_path / "out").glob("*.tmp"))
    text = format_table(table)
    assert text.count("*") == sum(r.pareto for r in table) and "w" not in text.splitlines()[2]


def test_load_errors_name_the_file_and_key(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_budgets(tmp_path / "nope.json")
    bad = tmp_path / "budgets.json"
    bad.write_text('{"version": 1, "records": [{"width": 1.0}]}')
    with pytest.raises(ValueError, match=r"budgets.json: records\[0\]: missing keys \['crop'"):
        load_budgets(bad)
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_budgets(bad)
    csv_path = tmp_path / "budgets.csv"
    save_budgets(TABLE, tmp_path)
    csv_path.write_text(csv_path.read_text().replace("75.0", "seventy", 1))
    with pytest.raises(ValueError, match="row 2: top1='seventy'"):
        load_budgets(csv_path)


@pytest.mark.parametrize("cost", ["gflops_per_video", "latency_ms"])
def test_plot_written(tmp_path, cost):
    path = plot_budgets(mark_pareto(TABLE), tmp_path / f"top1_vs_{cost}.png", cost=cost)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_measure_latency_restores_threads_mode_and_config():
    model = toy_x3d().train()
    set_config(model, SubnetConfig(0.75, 4, 32))
    threads = torch.get_num_threads()
    ms = measure_latency(model, SubnetConfig(0.5, 2, 24), repeats=3, warmup=1, threads=1)
    assert ms > 0 and torch.get_num_threads() == threads
    assert model.training and current_config(model) == SubnetConfig(0.75, 4, 32)
    with pytest.warns(UserWarning, match="no statistics calibrated"):
        static = export_subnet(model, SubnetConfig(0.5, 2, 24))
    assert measure_latency(static, inputs=torch.randn(1, 3, 2, 24, 24), repeats=2, warmup=0) > 0
    with pytest.raises(ValueError, match="needs `inputs`"):
        measure_latency(static, SubnetConfig(0.5, 2, 24), repeats=2)


# -- evaluator ---------------------------------------------------------------------------
class _Loader:
    """Multi-view test batches in memory; counts how often it is iterated (decoded)."""

    def __init__(self, model, *, videos=4, temporal=2, spatial=3, batch=4, frames=4, seed=0):
        gen = torch.Generator().manual_seed(seed)
        self.samples = []
        for v in range(videos):
            for t in range(temporal):
                for s in range(spatial):
                    self.samples.append({"video": torch.randn(3, frames, 32, 32, generator=gen), "label": v % 3,
                                         "video_index": v, "clip_index": t, "aug_index": s})
        self.batch, self.passes = batch, 0

    def __iter__(self):
        self.passes += 1
        for i in range(0, len(self.samples), self.batch):
            chunk = self.samples[i:i + self.batch]
            yield {k: torch.stack([torch.as_tensor(c[k]) for c in chunk]) for k in chunk[0]}


def _hand_view_probs(model, loader, cfg, alpha=None):
    """Softmax of every view, computed one view at a time."""
    with torch.no_grad(), use_config(model.eval(), cfg):
        return [model(clip_for_config(s["video"][None], cfg, slowfast_alpha=alpha)).softmax(1)[0]
                for s in loader.samples]


def _hand_top1(loader, view_probs, keep):
    """Mean softmax over the kept views of each video -> top-1 in percent."""
    probs, labels = {}, {}
    for s, p in zip(loader.samples, view_probs):
        if keep(s):
            probs.setdefault(s["video_index"], []).append(p)
            labels[s["video_index"]] = s["label"]
    hits = [int(torch.stack(ps).mean(0).argmax()) == labels[v] for v, ps in probs.items()]
    return 100.0 * sum(hits) / len(hits)


@pytest.mark.parametrize("make", [toy_x3d, toy_slowfast])
def test_evaluate_configs_matches_per_view_hand_computation(make):
    model = make(num_classes=3)
    alpha = get_space(model).slowfast_alpha
    loader = _Loader(model, videos=3, frames=4 * (alpha or 1))
    configs = [SubnetConfig(1.0, 4, 32), SubnetConfig(0.5, 2, 24)]
    records = evaluate_configs(model, loader, configs, views=("1x1", "2x3"), progress=False)
    assert loader.passes == 1  # decoded once for every config and views
    assert [(r.config, r.views) for r in records] == [(c, v) for c in configs for v in ("1x1", "2x3")]
    view_probs = {cfg: _hand_view_probs(model, loader, cfg, alpha) for cfg in configs}
    for r in records:
        keep = (lambda s: True) if r.views == "2x3" else (lambda s: s["clip_index"] == 1 and s["aug_index"] == 1)
        assert r.top1 == pytest.approx(_hand_top1(loader, view_probs[r.config], keep))
        assert r.num_videos == 3 and r.top5 == 100.0  # 3 classes
        assert r.gflops_per_video == pytest.approx(r.gflops_per_view * (1 if r.views == "1x1" else 6))
        assert r.gflops_per_view == pytest.approx(count_flops(model, r.config) / 1e9)  # the real counter
        assert r.params == count_params(model, r.config)
    assert records[2].params < records[0].params and records[2].gflops_per_view < records[0].gflops_per_view
    assert any(r.pareto for r in records)


def test_evaluate_configs_errors_and_latency():
    model = toy_x3d(num_classes=3)
    loader = _Loader(model, videos=2, temporal=1, spatial=1)
    kw = dict(progress=False)
    with pytest.raises(ValueError, match="more views than the loader's 1x1"):
        evaluate_configs(model, loader, [SubnetConfig(1.0, 4, 32)], views=("2x1",), loader_views="1x1", **kw)
    with pytest.raises(ValueError, match="more than the 1x1 views"):
        evaluate_configs(model, _Loader(model, videos=1, temporal=2, spatial=1), [SubnetConfig(1.0, 4, 32)], **kw)
    with pytest.raises(ValueError, match="frames=3"):
        evaluate_configs(model, loader, [SubnetConfig(1.0, 3, 32)], **kw)
    [record] = evaluate_configs(model, loader, [SubnetConfig(0.5, 2, 24)], latency_repeats=2, **kw)
    assert record.latency_ms > 0


# -- runner and tools ------------------------------------------------------------------------
def _tool(name):
    spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_query_budget_tool(tmp_path, capsys):
    save_budgets(mark_pareto(TABLE), tmp_path)
    query = _tool("query_budget")
    assert query.main([str(tmp_path / "budgets.json"), "--max-gflops", "2.4"]) == 0
    assert capsys.readouterr().out.startswith("width=0.75 frames=8 crop=160 views=1x1: 1.2 GFLOPs/video")
    assert query.main([str(tmp_path / "budgets.csv"), "--max-latency-ms", "6.5", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == 60.0
    assert query.main([str(tmp_path / "budgets.json"), "--max-gflops", "0.01"]) == 2
    assert "cheapest is (width=0.25, frames=4, crop=128)" in capsys.readouterr().err


def test_calibrate_evaluate_and_write_the_report(tmp_path):
    model = toy_x3d(num_classes=3)
    configs = [SubnetConfig(1.0, 4, 32), SubnetConfig(0.5, 2, 24)]
    calib = [torch.randn(2, 3, 4, 32, 32) for _ in range(2)]
    calibrate_bn(model, calib, configs, num_batches=2)
    records = evaluate_configs(model, _Loader(model, videos=2, temporal=1, spatial=1), configs, progress=False,
                               require_calibrated=True)
    write_report(records, tmp_path, meta={"model": "toy"})
    assert load_budgets(tmp_path / "budgets.json") == records
    assert {p.name for p in tmp_path.iterdir()} == {"budgets.json", "budgets.csv", "budgets.txt", "top1_vs_gflops.png"}
    assert json.loads((tmp_path / "budgets.json").read_text())["meta"]["model"] == "toy"
    assert all(model.block.norm_b.has_stats(c) for c in configs)


def test_load_and_save_weights(tmp_path):
    model = toy_x3d()
    calibrate_bn(model, [torch.randn(2, 3, 4, 32, 32)], [SubnetConfig(0.5, 2, 24)], num_batches=1)
    path = save_weights({"model": model.state_dict(), "epoch": 3}, tmp_path / "m.pth")
    assert calibrated_path(path).name == "m_calibrated.pth"
    fresh = toy_x3d(seed=1)
    assert load_weights(fresh, path)["epoch"] == 3
    assert fresh.block.norm_b.has_stats(SubnetConfig(0.5, 2, 24))
    torch.testing.assert_close(fresh.proj.weight, model.proj.weight)
    state = model.state_dict()
    state["extra.weight"] = state.pop("proj.weight")
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "bad.pth")  # DDP prefix is stripped
    with pytest.raises(CheckpointMismatchError, match=r"bad.pth does not match.*missing keys: proj.weight; unexpected keys: extra.weight"):
        load_weights(fresh, tmp_path / "bad.pth")
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_weights(fresh, tmp_path / "nope.pth")
    assert not list(tmp_path.glob("*.tmp"))


def test_run_test_real_config_data_and_three_crops(tmp_path):
    """engine.inference.run_test (what tools/test_net.py runs) on the real instant config: a
    tiny X3D, a synthetic Kinetics-format dataset decoded by kinetics_dataset, 1x1 and 1x3
    views (left/centre/right crops), a plain state-dict checkpoint."""
    from mutualnet_video.data import make_synthetic_kinetics
    from mutualnet_video.engine.config import load_config
    from mutualnet_video.engine.inference import load_model, run_test

    data = tmp_path / "data"
    make_synthetic_kinetics(data, num_classes=2, train_per_class=1, val_per_class=1, frames=8, size=(32, 48))
    config = Path(__file__).parents[1] / "configs" / "instant" / "x3d_synthetic.yaml"
    cfg = load_config(str(config), [f"data.train.data_path={data}", f"data.val.data_path={data}", "data.batch_size=2",
                                    "model.input_clip_length=4", "model.input_crop_size=32", "model.frames=[4,2]",
                                    "model.crops=[32,24]", "model.depth_factor=0.25", "model.model_num_class=2", "eval.calib_batches=1",
                                    "eval.views=[1x1,1x3]", "eval.widths=[0.5]", "eval.frames=[2]"])
    model, space, _ = load_model(cfg, save_weights(build_state(cfg), tmp_path / "m.pth"))
    with pytest.raises(NotCalibratedError, match=r"w0500_f2_c32.*--calibrate"):
        run_test(cfg, checkpoint=tmp_path / "m.pth", progress=False)
    result = run_test(cfg, checkpoint=tmp_path / "m.pth", calibrate=True, progress=False)
    assert result.calibrated_checkpoint == tmp_path / "m_calibrated.pth"
    assert [(r.config.tag, r.views) for r in result.records] == [
        (f"w0500_f2_c{c}", v) for c in space.crops for v in ("1x1", "1x3")]
    for r in result.records:
        assert r.num_videos == 2 and r.gflops_per_video == pytest.approx(r.gflops_per_view * (3 if r.views == "1x3" else 1))
    assert load_budgets(result.output_dir / "budgets.json") == result.records
    again = run_test(cfg, checkpoint=result.calibrated_checkpoint, output_dir=tmp_path / "again", progress=False)
    assert again.records == result.records  # calibrated statistics saved and restored exactly
    with pytest.raises(ValueError, match="crop=40"):
        run_test(cfg, checkpoint=tmp_path / "m.pth", crops=[40])


def build_state(cfg):
    from mutualnet_video.engine.config import build_model

    return build_model(cfg).state_dict()


def test_evaluate_runs_only_the_views_a_spec_uses():
    model = toy_x3d(num_classes=3)
    loader = _Loader(model, videos=3, temporal=2, spatial=3)
    calls = []
    model.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[0]))
    configs = [SubnetConfig(0.5, 2, 24)]
    [record] = evaluate_configs(model, loader, configs, views=("1x1",), loader_views="2x3", progress=False,
                                flops_fn=lambda m, c: 1, params_fn=lambda m, c: 1)
    assert sum(calls) == 3  # one view of each video, not 18
    view_probs = _hand_view_probs(model, loader, configs[0])
    assert record.top1 == pytest.approx(
        _hand_top1(loader, view_probs, lambda s: s["clip_index"] == 1 and s["aug_index"] == 1))
