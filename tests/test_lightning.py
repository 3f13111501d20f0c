"""The Lightning integration on the CPU: Lightning's Trainer, the toy slimmable net, a few steps.

Every test name contains "lightning" (``pytest -k lightning``). The expected values are
derived without the module: a hand-written sandwich step (cross-entropy, a KL written out,
one backward of the summed losses), the LR formulas, the accuracy counted by hand.
"""

from __future__ import annotations

import copy
import functools
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

pl = pytest.importorskip("lightning.pytorch")

from torch.utils.data import DataLoader  # noqa: E402

from mutualnet_video.core import (  # noqa: E402
    SlimBatchNorm,
    SlimSyncBatchNorm,
    SubnetConfig,
    clip_for_config,
    get_space,
    use_config,
)
from mutualnet_video.engine import SandwichSampler, mutual_step  # noqa: E402
from mutualnet_video.evaluation import missing_calibration  # noqa: E402
from mutualnet_video.integrations.lightning import CalibrateBN, MutualNetModule, SlimLayerSync  # noqa: E402
from mutualnet_video.testing import create_toy_slimnet, toy_clip_dataset  # noqa: E402

LR = 0.1


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_toy_slimnet(channels=8, num_subnets=3)


def _train_loader() -> DataLoader:
    return DataLoader(toy_clip_dataset(num_videos=8), batch_size=2)  # 4 batches an epoch, in order


def _val_loader() -> DataLoader:
    return DataLoader(toy_clip_dataset(num_videos=6, split="val"), batch_size=3)


class _ResumableLoader(DataLoader):
    """A DataLoader with Lightning's ``state_dict`` / ``load_state_dict`` protocol: the batches
    yielded in the current epoch; after loading, the next iteration skips them (none if the
    epoch was complete)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._yielded = self._skip = 0

    def __iter__(self):
        skip, self._skip = self._skip, 0
        self._yielded = skip
        for index, batch in enumerate(super().__iter__()):
            if index >= skip:
                self._yielded += 1
                yield batch

    def state_dict(self) -> dict:
        return {"yielded": self._yielded}

    def load_state_dict(self, state: dict) -> None:
        self._skip = state["yielded"] % len(self)


def _trainer(**kwargs) -> pl.Trainer:
    defaults = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, num_sanity_val_steps=0)
    return pl.Trainer(**(defaults | kwargs))


def _sgd(params, **kwargs):
    return torch.optim.SGD(params, lr=LR, **kwargs)


def _kl(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """KL(softmax(teacher) || softmax(student)), batch mean, written out."""
    p = teacher.softmax(-1)
    return (p * (p.log() - student.log_softmax(-1))).sum() / student.shape[0]


def _reference_grads(model: torch.nn.Module, video: torch.Tensor, labels: torch.Tensor,
                     configs: list[SubnetConfig]) -> dict[str, torch.Tensor]:
    """The sandwich rule by hand: CE of the full configuration + KL of every other one to its
    detached logits, one backward of the sum; returns the gradients (model left unchanged)."""
    model = copy.deepcopy(model).train()
    total, teacher = 0.0, None
    for cfg in configs:
        with use_config(model, cfg):
            logits = model(clip_for_config(video, cfg))
        if teacher is None:
            total, teacher = F.cross_entropy(logits, labels), logits.detach()
        else:
            total = total + _kl(logits, teacher)
    total.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def _first_batch() -> tuple[torch.Tensor, torch.Tensor]:
    batch = next(iter(_train_loader()))
    return batch["video"], batch["label"]


# -- import ------------------------------------------------------------------------------
def test_lightning_is_optional_and_its_absence_is_one_clear_error():
    code = (
        "import sys\n"
        "import mutualnet_video, mutualnet_video.integrations\n"
        "assert not any(m.split('.')[0] in ('lightning', 'pytorch_lightning') for m in sys.modules), 'imported'\n"
        "sys.modules['lightning'] = None  # as if it were not installed\n"
        "try:\n"
        "    import mutualnet_video.integrations.lightning\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert 'pip install -e ".[lightning]"' in out.stdout


# -- the step ------------------------------------------------------------------------------
def test_lightning_step_gradients_equal_a_direct_mutual_step_and_the_hand_written_sandwich():
    model = _model()
    initial = copy.deepcopy(model)
    module = MutualNetModule(model, optim=_sgd, seed=0)
    _trainer(max_steps=1).fit(module, _train_loader())
    assert module.trainer.global_step == 1
    lightning_grads = {n: p.grad for n, p in model.named_parameters()}

    # a direct mutual_step on a copy, same sampler seed (seed + 1) and first batch
    direct = copy.deepcopy(initial).train()
    space = get_space(direct)
    video, labels = _first_batch()
    sampler = SandwichSampler(space, generator=torch.Generator().manual_seed(1))
    mutual_step(direct, sampler(video), labels, criterion=F.cross_entropy, optimizer=_sgd(direct.parameters()))
    for name, p in direct.named_parameters():
        torch.testing.assert_close(lightning_grads[name], p.grad, rtol=0, atol=0, msg=name)

    # independently: the configurations drawn by hand, one backward of the summed losses
    configs = space.sandwich(torch.Generator().manual_seed(1))
    assert len(configs) == 3 and configs[0] == space.full()
    expected = _reference_grads(initial, video, labels, configs)
    for name, p in model.named_parameters():
        torch.testing.assert_close(lightning_grads[name], expected[name], msg=name)
        # one SGD step of exactly those gradients
        torch.testing.assert_close(p.detach(), dict(initial.named_parameters())[name].detach() - LR * expected[name])


def test_lightning_clip_grad_norm_clips_the_summed_gradients():
    norms = {}
    for clip in (None, 1e-3):
        model = _model()
        module = MutualNetModule(model, optim=_sgd, clip_grad_norm=clip)
        _trainer(max_steps=1).fit(module, _train_loader())
        norms[clip] = float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])))
    assert norms[None] > 0.1  # clipping had work to do
    assert norms[1e-3] == pytest.approx(1e-3, rel=1e-3)


def test_lightning_bf16_mixed_runs_every_forward_under_autocast():
    model = _model()
    initial = [p.detach().clone() for p in model.parameters()]
    dtypes = []
    model.proj.register_forward_hook(lambda _m, _i, out: dtypes.append(out.dtype))
    module = MutualNetModule(model, optim=_sgd)
    _trainer(max_steps=1, precision="bf16-mixed").fit(module, _train_loader())
    assert dtypes == [torch.bfloat16] * 3  # the three configurations of the sandwich
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(math.isfinite(v) for v in module.step_losses.values())
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), initial))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="16-mixed scales the loss on CUDA only (no GradScaler on the CPU)")
def test_lightning_16_mixed_scales_the_backward_and_steps_on_unscaled_gradients():
    model = _model()
    initial = copy.deepcopy(model)
    module = MutualNetModule(model, optim=_sgd)
    trainer = _trainer(accelerator="cuda", max_steps=1, precision="16-mixed")
    trainer.fit(module, _train_loader())
    assert trainer.precision_plugin.scaler is not None and trainer.precision_plugin.scaler.get_scale() > 1
    video, labels = _first_batch()
    expected = _reference_grads(initial, video, labels, get_space(initial).sandwich(torch.Generator().manual_seed(1)))
    for name, p in model.named_parameters():  # unscaled: fp16 autocast noise, not a factor of the loss scale
        torch.testing.assert_close(p.grad.cpu(), expected[name], rtol=0.05, atol=5e-3, msg=name)


# -- the LR schedule ---------------------------------------------------------------------
@pytest.mark.parametrize("interval, steps_of_decay", [("step", 8), ("epoch", 2)])
def test_lightning_scheduler_steps_per_iteration_or_per_epoch(interval, steps_of_decay):
    module = MutualNetModule(_model(), optim=_sgd, lr_interval=interval,
                             lr_scheduler=functools.partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5))
    trainer = _trainer(max_epochs=2)
    trainer.fit(module, _train_loader())
    assert trainer.global_step == 8
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(LR * 0.5 ** steps_of_decay)


def test_lightning_mapping_schedule_is_the_warmup_cosine_of_the_builtin_trainer():
    seen = []

    class RecordLR(pl.Callback):
        def on_train_batch_start(self, trainer, *_args):
            seen.append(trainer.optimizers[0].param_groups[0]["lr"])

    module = MutualNetModule(_model(), optim={"lr": LR, "momentum": 0.9},
                             lr_scheduler={"warmup_iters": 2, "warmup_factor": 0.1, "min_lr_factor": 0.0})
    _trainer(max_epochs=2, callbacks=[RecordLR()]).fit(module, _train_loader())
    expected = []
    for it in range(8):  # linear warm-up over 2 of 8 iterations, then the cosine to 0
        where = it / 8
        factor = 0.1 + 0.9 * where / 0.25 if where < 0.25 else 0.5 * (1 + math.cos(math.pi * (where - 0.25) / 0.75))
        expected.append(LR * factor)
    assert seen == pytest.approx(expected)


# -- checkpoint and resume ---------------------------------------------------------------
def test_lightning_resume_from_a_periodic_checkpoint_continues_bit_identically(tmp_path):
    def module() -> MutualNetModule:  # max_iters given: see MutualNetModule's lr_scheduler
        return MutualNetModule(_model(), optim={"lr": LR, "momentum": 0.9, "weight_decay": 1e-4},
                               lr_scheduler={"warmup_iters": 2, "max_iters": 12})

    def trainer(**kwargs) -> pl.Trainer:  # 3 epochs of 4 iterations
        return _trainer(max_epochs=3, enable_checkpointing=True, default_root_dir=tmp_path, **kwargs)

    def loader() -> DataLoader:  # resumable mid-epoch, else Lightning replays the epoch's first batches
        return _ResumableLoader(toy_clip_dataset(num_videos=8), batch_size=2)

    every = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=2, save_top_k=-1)
    straight = module()
    trainer(callbacks=[every]).fit(straight, loader())
    final = straight.model.state_dict()
    # step 4 ends epoch 0, step 6 is in the middle of epoch 1
    for name in ("epoch=0-step=4.ckpt", "epoch=1-step=6.ckpt"):
        ckpt = os.path.join(tmp_path, name)
        assert "mutualnet_sampler" in torch.load(ckpt, weights_only=False)
        resumed = module()
        again = trainer()
        again.fit(resumed, loader(), ckpt_path=ckpt)
        assert again.global_step == straight.trainer.global_step == 12
        for (key, a), b in zip(final.items(), resumed.model.state_dict().values()):
            assert torch.equal(a, b), f"{name}: {key}"
        assert resumed.sampler.generator.get_state().equal(straight.sampler.generator.get_state())


# -- the callback ------------------------------------------------------------------------
class _Recorder(pl.loggers.Logger):
    def __init__(self) -> None:
        super().__init__()
        self.metrics: dict[str, float] = {}

    @property
    def name(self) -> str:
        return "recorder"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        self.metrics.update(metrics)


def test_lightning_calibrate_bn_callback_calibrates_each_configuration_and_logs_the_table():
    model = _model()
    space = get_space(model)
    callback = CalibrateBN(num_batches=2)
    recorder = _Recorder()
    trainer = _trainer(max_epochs=2, callbacks=[callback], logger=recorder)
    trainer.fit(MutualNetModule(model, optim=_sgd), _train_loader(), _val_loader())

    assert 0.0 <= float(trainer.callback_metrics["val/top1"]) <= 100.0  # validation_step ran each epoch
    configs = [r.config for r in callback.records]
    smallest = space.smallest()
    assert configs[0] == space.full() and configs[-1] == smallest and len(configs) == 3
    assert callback.calibrated == 2
    for cfg in configs:
        assert missing_calibration(model, cfg) == []
    gflops = [r.gflops_per_view for r in callback.records]
    # full >= middle (0.75 of 8 channels rounds up to 8) > smallest
    assert gflops[0] >= gflops[1] > gflops[2] > 0

    # the accuracy of every configuration, counted by hand with its calibrated statistics
    val = next(iter(DataLoader(toy_clip_dataset(num_videos=6, split="val"), batch_size=6)))
    model.eval()
    for record in callback.records:
        with torch.no_grad(), use_config(model, record.config):
            hits = (model(clip_for_config(val["video"], record.config)).argmax(1) == val["label"]).sum()
        assert record.top1 == pytest.approx(100.0 * float(hits) / 6)
        assert record.num_videos == 6 and record.calibrated
        assert recorder.metrics[f"final/{record.config.tag}/top1"] == pytest.approx(record.top1)
        assert recorder.metrics[f"final/{record.config.tag}/gflops"] == pytest.approx(record.gflops_per_view)
    lines = callback.table.splitlines()
    assert len(lines) == 2 + 3 and "GFLOPs/view" in lines[0]
    assert f"{smallest.frames:>6} {smallest.crop:>5}" in lines[-1] and "calibrated" in lines[-1]


# -- DDP -----------------------------------------------------------------------------------
def _count_allreduce(state: list, bucket):
    import torch.distributed as dist

    state.append(bucket.index())
    buffer = bucket.buffer().div_(dist.get_world_size())
    return dist.all_reduce(buffer, async_op=True).get_future().then(lambda fut: fut.value()[0])


def test_lightning_layer_sync_plugin_keeps_the_slimmable_batchnorm():
    model = _model()
    names = [n for n, m in model.named_modules() if isinstance(m, SlimBatchNorm)]
    keys = list(model.state_dict())
    SlimLayerSync().apply(model)
    modules = dict(model.named_modules())
    assert names and all(isinstance(modules[n], SlimSyncBatchNorm) for n in names)
    assert list(model.state_dict()) == keys
    pl.Trainer(accelerator="cpu", devices=1, plugins=[SlimLayerSync()], logger=False)  # accepted as a plugin


def _ddp_worker(rank: int, port: int, out: str, steps: int, layer_sync: bool) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank), NODE_RANK="0")
    torch.set_num_threads(1)
    from lightning.pytorch.strategies import DDPStrategy

    buckets, after_step, seen = [], [], []

    class CountAllReduce(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            trainer.strategy.model.register_comm_hook(buckets, _count_allreduce)

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(batch["video_index"].tolist())

        def on_train_batch_end(self, *_args):
            after_step.append(len(buckets))

    module = MutualNetModule(_model(), optim=_sgd)
    sync = dict(plugins=[SlimLayerSync()]) if layer_sync else {}
    trainer = _trainer(devices=2, strategy=DDPStrategy(process_group_backend="gloo"), max_steps=steps,
                       callbacks=[CountAllReduce()], **sync)
    trainer.fit(module, _train_loader())
    bns = [m for m in module.model.modules() if isinstance(m, SlimBatchNorm)]
    assert bns and all(isinstance(m, SlimSyncBatchNorm) == layer_sync for m in bns)
    torch.save({"after_step": after_step, "seen": seen,
                "params": {n: p.detach().clone() for n, p in module.model.named_parameters()}},
               os.path.join(out, f"rank{rank}.pt"))


@pytest.mark.slow
@pytest.mark.parametrize("layer_sync", [False, True])
def test_lightning_ddp_all_reduces_once_per_iteration_and_averages_the_ranks_gradients(tmp_path, layer_sync):
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    steps = 2
    mp.start_processes(_ddp_worker, args=(port, str(tmp_path), steps, layer_sync), nprocs=2, join=True,
                       start_method="spawn")
    ranks = [torch.load(os.path.join(tmp_path, f"rank{r}.pt")) for r in (0, 1)]

    # the toy net fits one DDP bucket: one all-reduce per iteration, none in the no_sync backwards
    assert ranks[0]["after_step"] == ranks[1]["after_step"] == list(range(1, steps + 1))

    # Lightning's DistributedSampler gave the ranks disjoint clips
    seen = [[i for batch in rank["seen"] for i in batch] for rank in ranks]
    assert len(seen[0]) == len(seen[1]) == 2 * steps and not set(seen[0]) & set(seen[1])

    # expected: both ranks draw the same configurations; SGD on the mean of the ranks' gradients,
    # each from the hand-written sandwich on the clips that rank saw. With synchronized BN
    # (statistics over both ranks' clips) that mean is the sandwich on the two batches together.
    model = _model()
    space = get_space(model)
    generator = torch.Generator().manual_seed(1)
    data = toy_clip_dataset(num_videos=8)
    for step in range(steps):
        configs = space.sandwich(generator)
        groups = [ranks[0]["seen"][step] + ranks[1]["seen"][step]] if layer_sync else \
            [rank["seen"][step] for rank in ranks]
        grads = []
        for index in groups:
            video = torch.stack([data[i]["video"] for i in index])
            labels = torch.tensor([data[i]["label"] for i in index])
            grads.append(_reference_grads(model, video, labels, configs))
        with torch.no_grad():
            for name, p in model.named_parameters():
                p -= LR * sum(g[name] for g in grads) / len(grads)
    for name, p in model.named_parameters():
        for rank in ranks:
            torch.testing.assert_close(rank["params"][name], p.detach(), msg=name)


# -- Hydra: a pytorchvideo_trainer-style config -------------------------------------------
def _readme_module_yaml() -> str:
    """The README's Lightning YAML: pytorchvideo_trainer's module node with its _target_ and the
    model's _target_ switched (conf/module/model/x3d_xs.yaml keeps every other key)."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```yaml\n")[1:]]
    found = [b for b in blocks if "integrations.lightning.MutualNetModule" in b]
    assert len(found) == 1, "README.md: expected one ```yaml block with the MutualNetModule node"
    return found[0]


def test_lightning_module_instantiates_from_a_pytorchvideo_trainer_style_hydra_node():
    hydra_utils = pytest.importorskip("hydra.utils")
    from omegaconf import OmegaConf

    from mutualnet_video.models import create_slimmable_x3d

    cfg = OmegaConf.create(_readme_module_yaml())
    cfg.module.lr_scheduler.warmup_iters = 2  # the README says 35; the toy fit below runs 4 iterations
    module = hydra_utils.instantiate(cfg.module, _recursive_=False)  # as pytorchvideo_trainer's train_app
    assert isinstance(module, MutualNetModule) and isinstance(module.criterion, torch.nn.CrossEntropyLoss)
    space = get_space(module.model)
    assert space.frames == (4,) and space.crops == (160,) and space.width_range == (0.5, 1.0)
    torch.manual_seed(0)
    direct = create_slimmable_x3d(input_channel=3, model_num_class=400, dropout_rate=0.5, input_clip_length=4,
                                  input_crop_size=160, depth_factor=2.2, head_activation=None)
    assert list(module.model.state_dict()) == list(direct.state_dict())

    # the same node with the toy model trains through Lightning's Trainer
    cfg.module.model = {"_target_": "mutualnet_video.testing.create_toy_slimnet", "channels": 8, "num_subnets": 3}
    module = hydra_utils.instantiate(cfg.module, _recursive_=False)
    trainer = _trainer(max_epochs=1)
    trainer.fit(module, _train_loader())
    assert trainer.global_step == 4 and module.optimizers().param_groups[0]["nesterov"]
    assert all(math.isfinite(v) for v in module.step_losses.values())

    # optimizer and scheduler as Hydra _partial_ nodes, the scheduler stepped per epoch
    cfg.module.optim = {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 0.01}
    cfg.module.lr_scheduler = {"_target_": "torch.optim.lr_scheduler.StepLR", "_partial_": True, "step_size": 1,
                               "gamma": 0.5}
    cfg.module.lr_interval = "epoch"
    module = hydra_utils.instantiate(cfg.module, _recursive_=False)
    trainer = _trainer(max_epochs=1)
    trainer.fit(module, _train_loader())
    assert isinstance(trainer.optimizers[0], torch.optim.AdamW)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.005)
