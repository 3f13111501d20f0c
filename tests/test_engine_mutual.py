"""mutual_step follows the sandwich rule with in-place distillation (REFERENCE.md section 1)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mutualnet_video.core import (
    SubnetConfig,
    current_config,
    distillation_loss,
    get_space,
    scale_channels,
    use_config,
)
from mutualnet_video.engine import SandwichSampler, SingleSampler, mutual_step
from mutualnet_video.engine.mutual import detach_output
from mutualnet_video.testing import create_toy_slimnet


def _model(seed: int = 0, num_subnets: int = 4):
    torch.manual_seed(seed)
    return create_toy_slimnet(channels=16, model_num_class=5, width_range=(0.5, 1.0), frames=(4, 2),
                              crops=(32, 24), num_subnets=num_subnets)


def _batch(seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, 4, 32, 32, generator=gen), torch.tensor([1, 3])


class _CountingOptimizer(torch.optim.SGD):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.steps = 0
        self.grads_at_step: list[torch.Tensor] = []

    def step(self, closure=None):
        self.steps += 1
        self.grads_at_step = [p.grad.detach().clone() for g in self.param_groups for p in g["params"]]
        return super().step(closure)


def test_sandwich_order_teacher_detached_and_one_step():
    model = _model()
    space = get_space(model)
    video, labels = _batch()
    sampler = SandwichSampler(space, generator=torch.Generator().manual_seed(3))
    sub_inputs = sampler(video)
    assert len(sub_inputs) == 4
    assert sub_inputs[0][0] == space.full()
    assert sub_inputs[1][0].width == space.width_range[0]

    seen: list[SubnetConfig] = []
    model.register_forward_pre_hook(lambda m, args: seen.append(current_config(m)))
    teachers, criterion_calls = [], []

    def criterion(logits, targets):
        criterion_calls.append(current_config(model))
        return F.cross_entropy(logits, targets)

    def distill(student, teacher, *, temperature):
        teachers.append((teacher.requires_grad, teacher.grad_fn, temperature, current_config(model)))
        return distillation_loss(student, teacher, temperature=temperature)

    optimizer = _CountingOptimizer(model.parameters(), lr=0.1)
    losses = mutual_step(model, sub_inputs, labels, criterion=criterion, distill=distill, optimizer=optimizer,
                         temperature=2.0)
    assert seen == [cfg for cfg, _ in sub_inputs]  # one forward per config, full first
    assert criterion_calls == [space.full()]
    assert [t[3] for t in teachers] == [cfg for cfg, _ in sub_inputs[1:]]
    assert all(req is False and fn is None and temp == 2.0 for req, fn, temp, _ in teachers)
    assert optimizer.steps == 1
    assert list(losses)[0] == space.full().tag and len(losses) == 4
    assert current_config(model) is None  # restored after the step


def test_gradients_are_the_sum_over_subnetworks():
    model = _model()
    video, labels = _batch()
    sub_inputs = SandwichSampler(get_space(model), generator=torch.Generator().manual_seed(5))(video)
    reference = copy.deepcopy(model)

    optimizer = _CountingOptimizer(model.parameters(), lr=0.1)
    mutual_step(model, sub_inputs, labels, criterion=nn.CrossEntropyLoss(), optimizer=optimizer)

    # Manual: each configuration's gradient on its own, then summed.
    params = list(reference.parameters())
    with use_config(reference, sub_inputs[0][0]):
        teacher_logits = reference(sub_inputs[0][1])
    per_config = [torch.autograd.grad(F.cross_entropy(teacher_logits, labels), params)]
    teacher = teacher_logits.detach()
    for cfg, x in sub_inputs[1:]:
        with use_config(reference, cfg):
            loss = distillation_loss(reference(x), teacher)
        per_config.append(torch.autograd.grad(loss, params, allow_unused=True))
    summed = [sum(g[i] if g[i] is not None else torch.zeros_like(p) for g in per_config) for i, p in enumerate(params)]
    for got, want in zip(optimizer.grads_at_step, summed):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    # the sub-networks contribute: the summed gradient differs from the full network's alone
    conv = 0  # first conv weight
    assert not torch.allclose(summed[conv], per_config[0][conv])
    assert all(g[conv].abs().sum() > 0 for g in per_config)
    # and one SGD step with that gradient gives the same weights
    for p_ref, g, p in zip(params, summed, model.parameters()):
        torch.testing.assert_close(p, p_ref.detach() - 0.1 * g, rtol=1e-5, atol=1e-7)


def test_single_network_mode_is_plain_training():
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 8 * 8, 5))
    reference = copy.deepcopy(plain)
    x, y = torch.randn(2, 3, 4, 8, 8), torch.tensor([0, 4])
    optimizer = torch.optim.SGD(plain.parameters(), lr=0.5)
    losses = mutual_step(plain, SingleSampler(None)(x), y, criterion=nn.CrossEntropyLoss(), optimizer=optimizer)
    assert list(losses) == ["model"]
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.5)
    loss = F.cross_entropy(reference(x), y)
    loss.backward()
    ref_opt.step()
    assert losses["model"] == pytest.approx(float(loss.detach()))
    for a, b in zip(plain.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b)


def test_single_sampler_uses_full_config_only():
    model = _model()
    video, _ = _batch()
    sub = SingleSampler(get_space(model))(video[:, :, :, :24, :24])
    assert [c for c, _ in sub] == [get_space(model).full()]
    assert sub[0][1].shape[-1] == 32


@pytest.mark.parametrize("bad_index", [0, 2])
def test_non_finite_loss_raises_and_skips_the_step(bad_index):
    model = _model()
    before = copy.deepcopy(model.state_dict())
    video, labels = _batch()
    sub_inputs = SandwichSampler(get_space(model), generator=torch.Generator().manual_seed(1))(video)
    calls = {"n": 0}

    def criterion(logits, targets):
        loss = F.cross_entropy(logits, targets)
        return loss * float("nan") if bad_index == 0 else loss

    def distill(student, teacher, *, temperature):
        calls["n"] += 1
        loss = distillation_loss(student, teacher)
        return loss * float("inf") if calls["n"] == bad_index else loss

    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with pytest.raises(FloatingPointError, match=rf"{sub_inputs[bad_index][0].tag}.*iteration 17"):
        mutual_step(model, sub_inputs, labels, criterion=criterion, distill=distill, optimizer=optimizer,
                    iteration=17)
    for key, value in model.state_dict().items():
        if key.endswith("weight") or key.endswith("bias"):
            torch.testing.assert_close(value, before[key], rtol=0, atol=0)


def test_clip_grad_norm_bounds_the_step():
    model = _model()
    video, labels = _batch()
    sub_inputs = SandwichSampler(get_space(model), generator=torch.Generator().manual_seed(2))(video)
    optimizer = _CountingOptimizer(model.parameters(), lr=0.1)
    mutual_step(model, sub_inputs, labels, criterion=nn.CrossEntropyLoss(), optimizer=optimizer, clip_grad_norm=1e-3)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in optimizer.grads_at_step]))
    assert float(norm) <= 1e-3 * (1 + 1e-4)


def test_sandwich_sampler_state_roundtrip():
    model = _model()
    sampler = SandwichSampler(get_space(model), generator=torch.Generator().manual_seed(9))
    video, _ = _batch()
    state = sampler.state_dict()
    first = [c for c, _ in sampler(video)]
    sampler.load_state_dict(state)
    assert [c for c, _ in sampler(video)] == first


def test_grad_scaler_path_matches_the_unscaled_step():
    """The AMP bookkeeping (scale, unscale before clipping, scaler.step) gives the plain step's weights."""
    video, labels = _batch()
    results = []
    for use_scaler in (False, True):
        model = _model()
        sub_inputs = SandwichSampler(get_space(model), generator=torch.Generator().manual_seed(4))(video)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10) if use_scaler else None
        losses = mutual_step(model, sub_inputs, labels, criterion=nn.CrossEntropyLoss(), optimizer=optimizer,
                             scaler=scaler, clip_grad_norm=0.5)
        results.append((losses, [p.detach().clone() for p in model.parameters()]))
    assert results[0][0] == pytest.approx(results[1][0])  # losses are reported unscaled
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


class _DictOutput(nn.Module):
    """The toy net returning ``{"out": logits}`` (segmentation heads' output format)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        return {"out": self.model(x)}


def test_dict_outputs_and_teacher_fn_give_the_same_step_as_tensors():
    video, labels = _batch()
    plain, wrapped = _model(), _DictOutput(_model())
    wrapped.model.load_state_dict(plain.state_dict(), strict=True)
    sub_inputs = SandwichSampler(get_space(plain), generator=torch.Generator().manual_seed(3))(video)
    seen = []

    def distill(student, teacher, *, temperature):
        seen.append(type(teacher))
        assert not teacher["out"].requires_grad
        return distillation_loss(student["out"], teacher["out"], temperature=temperature)

    ref = mutual_step(plain, sub_inputs, labels, criterion=F.cross_entropy,
                      optimizer=torch.optim.SGD(plain.parameters(), lr=0.1))
    ours = mutual_step(wrapped, sub_inputs, labels, criterion=lambda out, t: F.cross_entropy(out["out"], t),
                       distill=distill, optimizer=torch.optim.SGD(wrapped.parameters(), lr=0.1))
    assert seen == [dict] * (len(sub_inputs) - 1)
    assert list(ours) == list(ref)
    for (name, a), b in zip(wrapped.model.state_dict().items(), plain.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    # teacher_fn picks what the sub-networks distill from
    custom = mutual_step(wrapped, sub_inputs[:2], labels, criterion=lambda out, t: F.cross_entropy(out["out"], t),
                         distill=lambda s, t, *, temperature: distillation_loss(s["out"], t),
                         teacher_fn=lambda out: out["out"].detach(),
                         optimizer=torch.optim.SGD(wrapped.parameters(), lr=0.1))
    assert len(custom) == 2
    with pytest.raises(TypeError, match="pass teacher_fn"):
        detach_output(object())


def _compile_counts(model, run, rounds=2):
    """Frames compiled by ``compile_slimmable(model)`` (eager backend, static shapes) after each
    round of ``run(compiled)``, and the graph breaks; dynamo's limits are restored after."""
    from torch._dynamo.testing import CompileCounter

    from mutualnet_video.engine import compile_slimmable

    torch._dynamo.reset()  # no cache entry of another test (same code, another backend)
    counter, counts = CompileCounter(), []
    torch._dynamo.utils.counters.clear()
    with torch._dynamo.config.patch(recompile_limit=8, accumulated_recompile_limit=256):
        compiled = compile_slimmable(model, backend=counter, dynamic=False)
        limit = torch._dynamo.config.recompile_limit
        for _ in range(rounds):
            run(compiled)
            counts.append(counter.frame_count)
    counters = torch._dynamo.utils.counters  # graph breaks, and frames dynamo skipped ("unimplemented")
    return counts, sum(counters["graph_break"].values()) + sum(counters["unimplemented"].values()), limit


def test_compile_slimmable_static_one_graph_per_channel_pattern_and_input():
    """Static shapes (``dynamic=False``): the toy's 20 evaluation configurations, with BN
    statistics calibrated for each, run in one graph per (channel pattern, input size), here
    8 (dynamo's default limit), outputs equal to eager, none recompiled in a
    second pass (the statistics are read from tensors, not looked up by tag); training
    (mutual_step over sandwich samples, backward) compiles at most one graph per channel
    pattern x input size and nothing for samples already seen."""
    from mutualnet_video.engine import graph_budget

    torch.manual_seed(0)
    model = create_toy_slimnet(channels=8).eval()
    space = get_space(model)
    budget = graph_budget(model)
    assert (budget.channel_patterns, budget.inputs, budget.eval) == (2, 4, 8)  # 8 and 16 channels
    assert len(list(space)) == 20
    clip = torch.randn(2, 3, 4, 32, 32)
    _store_random_stats(model, space)

    def evaluate(compiled):
        for subnet in space:
            x = space.model_input(clip, subnet)
            with use_config(model, subnet), torch.no_grad():
                torch.testing.assert_close(compiled(x), model(x))

    counts, breaks, limit = _compile_counts(model, evaluate)
    assert counts == [8, 8] and breaks == 0 and limit >= budget.total

    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    sampler = SandwichSampler(space, generator=torch.Generator().manual_seed(0))
    steps = [sampler(clip) for _ in range(4)]
    labels = torch.tensor([0, 1])

    def train(compiled):
        for sub_inputs in steps:
            mutual_step(compiled, sub_inputs, labels, criterion=F.cross_entropy, optimizer=optimizer)

    counts, breaks, _ = _compile_counts(model, train)
    assert 0 < counts[0] == counts[1] <= budget.train and breaks == 0


def _store_random_stats(model, space):
    """Distinct BN statistics for every configuration, as calibration leaves them."""
    from mutualnet_video.core import SlimBatchNorm

    gen = torch.Generator().manual_seed(3)
    for cfg in space:
        with use_config(model, cfg):
            for module in model.modules():
                if isinstance(module, SlimBatchNorm):
                    n = module.num_features if cfg.width == 1.0 else scale_channels(module.num_features, cfg.width)
                    module.store_stats(cfg, torch.randn(n, generator=gen), torch.rand(n, generator=gen) + 0.5)


@pytest.mark.parametrize("make", ["toy", "toy_x3d", "toy_slowfast"])
def test_plain_torch_compile_runs_the_space_in_a_few_graphs(make):
    """``torch.compile(model)`` with dynamo's defaults (dynamic shapes, recompile limit 8):
    the channel counts are read from tensor shapes, so they become dynamic sizes and a few
    graphs serve every width. One compiled model trained over 10 sandwiches (40 passes of
    random widths), then evaluated over the 20 configurations with calibrated statistics
    each, takes at most 5 graphs (4 while training: static input sizes, then the crop, then
    the frames dynamic; one for evaluation, without autograd), adds none in a second round
    of both, and gives eager's outputs."""
    from torch._dynamo.testing import CompileCounter

    from mutualnet_video.testing import toy_slowfast, toy_x3d

    torch.set_num_threads(2)  # conv's backend choice, and what it guards on, follow the threads (restored by conftest)
    torch.manual_seed(0)
    model = {"toy": lambda: create_toy_slimnet(channels=16), "toy_x3d": toy_x3d, "toy_slowfast": toy_slowfast}[make]()
    space = get_space(model)
    alpha = getattr(space, "slowfast_alpha", None) or 1
    clip = torch.randn(2, 3, max(space.frames) * alpha, 32, 32)
    _store_random_stats(model, space)
    generator = torch.Generator().manual_seed(0)
    samples = [list(space.sandwich(generator)) for _ in range(10)]
    assert len({cfg.width for sample in samples for cfg in sample}) > 8  # more widths than the limit

    def fresh(t):
        return [v.clone() for v in t] if isinstance(t, list) else t.clone()

    def train(compiled):
        model.train()
        for sample in samples:
            for cfg in sample:
                x = space.model_input(clip, cfg)
                with use_config(model, cfg):
                    torch.manual_seed(1)
                    out = compiled(fresh(x))
                    out.sum().backward()
                    torch.manual_seed(1)
                    torch.testing.assert_close(out.detach(), model(fresh(x)).detach(), rtol=1e-5, atol=1e-5)

    def evaluate(compiled):
        model.eval()
        for cfg in space:
            x = space.model_input(clip, cfg)
            with use_config(model, cfg), torch.no_grad():
                torch.testing.assert_close(compiled(fresh(x)), model(fresh(x)))

    torch._dynamo.reset()
    counter, counts = CompileCounter(), []
    with torch._dynamo.config.patch(recompile_limit=8):
        compiled = torch.compile(model, backend=counter)
        for _ in range(2):
            for run in (train, evaluate):
                run(compiled)
                counts.append(counter.frame_count)
    assert counts[0] <= 4 and counts[1] <= 5 and counts[2:] == [counts[1]] * 2, counts


@pytest.mark.parametrize("hint", [True, False])
def test_hinted_channel_counts_are_dynamic_in_the_first_graph(hint):
    """With the layers' hints (the default, hint_dynamic_sizes) the first graph already has
    the channel counts dynamic: other widths, same input, reuse it. Without them dynamo
    specializes the first graph on the first width, and the second width compiles another.
    Full width first: a graph traced there must not specialize on it (a strided slice of the
    input channels is contiguous only at full width, and conv's backend choice reads that)."""
    from torch._dynamo.testing import CompileCounter

    from mutualnet_video.core import hint_dynamic_sizes

    torch.set_num_threads(2)  # conv's backend choice, and what it guards on, follow the threads (restored by conftest)
    torch.manual_seed(0)
    model = create_toy_slimnet(channels=16).train()
    space = get_space(model)
    torch._dynamo.reset()
    hint_dynamic_sizes(model, hint)
    counter = CompileCounter()
    compiled = torch.compile(model, backend=counter)
    clip = torch.randn(2, 3, 4, 32, 32)
    counts = []
    for width in (1.0, 0.5, 0.75):
        with use_config(model, SubnetConfig(width, max(space.frames), max(space.crops))):
            compiled(clip.clone()).sum().backward()
        counts.append(counter.frame_count)
    assert counts == ([1, 1, 1] if hint else [1, 2, 2]), counts


def test_compiled_bn_of_a_module_from_before_active_stats_uses_its_calibrated_statistics():
    """A BN layer without ``_active_stats`` in its instance (unpickled from an older version,
    not switched since) looks its statistics up by tag in a compiled region, as eagerly."""
    from mutualnet_video.core import SlimBatchNorm

    torch.manual_seed(0)
    model = create_toy_slimnet(channels=16).eval()
    space = get_space(model)
    _store_random_stats(model, space)
    cfg = SubnetConfig(0.5, max(space.frames), max(space.crops))
    x = space.model_input(torch.randn(2, 3, 4, 32, 32), cfg)
    with use_config(model, cfg), torch.no_grad():
        for module in model.modules():
            if isinstance(module, SlimBatchNorm):
                module.__dict__.pop("_active_stats")
        torch._dynamo.reset()
        torch.testing.assert_close(torch.compile(model, backend="eager")(x), model(x))


def test_compile_slimmable_warns_where_training_would_keep_compiling(caplog):
    """With static shapes, a space of many channel patterns (every full-size model: X3D-XS
    has 198) makes training compile a graph on most early iterations: compile_slimmable says
    so; with dynamic shapes (the default) or a small space it does not."""
    import logging

    from mutualnet_video.engine import compile_slimmable, graph_budget

    few = create_toy_slimnet(channels=8)
    many = create_toy_slimnet(channels=256, width_range=(0.25, 1.0))
    budget = graph_budget(many)
    assert graph_budget(few).channel_patterns == 2 and budget.channel_patterns > 16
    with torch._dynamo.config.patch(recompile_limit=8, accumulated_recompile_limit=256), \
            caplog.at_level(logging.WARNING, logger="mutualnet_video.engine.compile"):
        compile_slimmable(few, dynamic=False)  # torch.compile is lazy: nothing compiles here
        compile_slimmable(many)
        assert not caplog.records
        compile_slimmable(many, dynamic=False)
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert f"{budget.channel_patterns} channel patterns" in record.getMessage()
    assert f"up to {budget.train} graphs" in record.getMessage()


def test_compiled_slowfast_toy_has_no_graph_break_at_its_concatenations():
    """The toy SlowFast (fusion concatenation: convs and the classifier take ``in_splits``)
    compiles in one graph per configuration, training with backward, outputs equal to eager:
    the in_splits index is built in the graph without a graph break (a ``torch._check``
    message closure broke it, and dynamo then ran the network block by block)."""
    from mutualnet_video.testing import toy_slowfast

    torch.manual_seed(0)
    model = toy_slowfast().train()
    space = get_space(model)
    clip = torch.randn(2, 3, max(space.frames) * 4, 32, 32)
    configs = [SubnetConfig(1.0, max(space.frames), 32), SubnetConfig(0.5, max(space.frames), 32)]

    def run(compiled):
        for cfg in configs:
            x = space.model_input(clip, cfg)
            with use_config(model, cfg):
                out = compiled([t.clone() for t in x])
                out.sum().backward()
                with torch.no_grad():
                    torch.testing.assert_close(out.detach(), model([t.clone() for t in x]), rtol=1e-5, atol=1e-5)

    counts, breaks, _ = _compile_counts(model, run)
    assert counts == [2, 2] and breaks == 0
