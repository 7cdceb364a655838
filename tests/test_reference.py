"""SiT, LayerSync, REPA and SRA checkpoints load exactly, export exactly, and never run code.

Each test builds a random-weight checkpoint in a reference's layout from the key names and shapes its code
documents (models.py / models/sit.py: DiT module names, `pos_embed` (1, N, D) from MAE's
get_2d_sincos_pos_embed, learn_sigma's 2C output channels, REPA's `projectors`, SRA's `ap_head`; train.py:
the saved dict's entries) and checks the loaded DiT's velocity against a reference forward written below
from those papers' equations (not our module):

    SiT / LayerSync:  u(x, s), s = 0 noise … 1 data, u ≈ x − ε    →  our v(x, t) = −u(x, 1 − t)
    REPA / SRA:       u(x, t), t = 1 noise (α = 1 − t, σ = t), u ≈ ε − x  →  our v(x, t) = u(x, t)
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from layersync.core.checkpoint import CheckpointError
from layersync.core.embed import TimestepEmbedder, timestep_embedding
from layersync.image import export_reference_checkpoint, load_reference_checkpoint
from layersync.image.reference import reference_export_state

C, P, GRID, WIDTH, HEADS, DEPTH, CLASSES = 4, 2, 4, 64, 4, 2, 10


pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py: tiny tensors


def mae_pos_embed(dim: int, side: int) -> torch.Tensor:
    """MAE's 2-D sin-cos table as the references build it (numpy float64, meshgrid(w, h)): (1, N, D)."""
    def one_d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid = np.stack(np.meshgrid(np.arange(side, dtype=np.float32), np.arange(side, dtype=np.float32)), 0)
    emb = np.concatenate([one_d(dim // 2, grid[0]), one_d(dim // 2, grid[1])], axis=1)
    return torch.from_numpy(emb).float()[None]


def reference_state(fmt: str, seed: int = 0, learn_sigma: bool | None = None,
                    width: int = WIDTH) -> dict[str, torch.Tensor]:
    """Random weights under the reference's key names and shapes."""
    g = torch.Generator().manual_seed(seed)
    learn_sigma = fmt in ("sit", "layersync") if learn_sigma is None else learn_sigma
    out = C * (2 if learn_sigma else 1)

    def r(*shape):
        return torch.randn(*shape, generator=g) * 0.1

    d = width
    sd = {"x_embedder.proj.weight": r(d, C, P, P), "x_embedder.proj.bias": r(d),
          "pos_embed": mae_pos_embed(d, GRID),
          "t_embedder.mlp.0.weight": r(d, 256), "t_embedder.mlp.0.bias": r(d),
          "t_embedder.mlp.2.weight": r(d, d), "t_embedder.mlp.2.bias": r(d),
          "y_embedder.embedding_table.weight": r(CLASSES + 1, d),
          "final_layer.linear.weight": r(P * P * out, d), "final_layer.linear.bias": r(P * P * out),
          "final_layer.adaLN_modulation.1.weight": r(2 * d, d),
          "final_layer.adaLN_modulation.1.bias": r(2 * d)}
    for i in range(DEPTH):
        for name, shape in (("attn.qkv", (3 * d, d)), ("attn.proj", (d, d)), ("mlp.fc1", (4 * d, d)),
                            ("mlp.fc2", (d, 4 * d)), ("adaLN_modulation.1", (6 * d, d))):
            sd[f"blocks.{i}.{name}.weight"], sd[f"blocks.{i}.{name}.bias"] = r(*shape), r(shape[0])
    if fmt == "repa":  # build_mlp(hidden, 2048, z_dim) — smaller here, dropped anyway
        for j, shape in (("0", (32, d)), ("2", (32, 32)), ("4", (24, 32))):
            sd[f"projectors.0.{j}.weight"], sd[f"projectors.0.{j}.bias"] = r(*shape), r(shape[0])
    if fmt == "sra":  # SimpleHead(D, D): Linear D → 2D, SiLU, Linear 2D → D
        sd["ap_head.linear1.weight"], sd["ap_head.linear1.bias"] = r(2 * d, d), r(2 * d)
        sd["ap_head.linear2.weight"], sd["ap_head.linear2.bias"] = r(d, 2 * d), r(d)
    return sd


def reference_forward(sd, x, s, y) -> torch.Tensor:
    """The DiT/SiT forward (Peebles & Xie 2023, adaLN-Zero) on raw weights, time input s as given."""
    d = sd["pos_embed"].shape[-1]
    lin = lambda h, k: F.linear(h, sd[f"{k}.weight"], sd[f"{k}.bias"])  # noqa: E731
    mod = lambda h, shift, scale: h * (1 + scale[:, None]) + shift[:, None]  # noqa: E731
    norm = lambda h: F.layer_norm(h, (d,), eps=1e-6)  # noqa: E731
    h = F.conv2d(x, sd["x_embedder.proj.weight"], sd["x_embedder.proj.bias"], stride=P)
    h = h.flatten(2).transpose(1, 2) + sd["pos_embed"]  # (B, N, D)
    freqs = torch.exp(-math.log(10000) * torch.arange(128, dtype=torch.float32) / 128)
    args = s.float()[:, None] * freqs[None]
    c = lin(F.silu(lin(torch.cat([args.cos(), args.sin()], 1), "t_embedder.mlp.0")), "t_embedder.mlp.2")
    c = c + sd["y_embedder.embedding_table.weight"][y]
    b, n = h.shape[:2]
    for i in range(DEPTH):
        sh1, sc1, g1, sh2, sc2, g2 = lin(F.silu(c), f"blocks.{i}.adaLN_modulation.1").chunk(6, 1)
        q, k, v = lin(mod(norm(h), sh1, sc1), f"blocks.{i}.attn.qkv").reshape(b, n, 3, HEADS, -1).unbind(2)
        q, k, v = (z.transpose(1, 2) for z in (q, k, v))  # (B, H, N, Dh)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), -1) @ v
        h = h + g1[:, None] * lin(att.transpose(1, 2).reshape(b, n, d), f"blocks.{i}.attn.proj")
        m = lin(F.gelu(lin(mod(norm(h), sh2, sc2), f"blocks.{i}.mlp.fc1"), approximate="tanh"),
                f"blocks.{i}.mlp.fc2")
        h = h + g2[:, None] * m
    shift, scale = lin(F.silu(c), "final_layer.adaLN_modulation.1").chunk(2, 1)
    out = lin(mod(norm(h), shift, scale), "final_layer.linear")  # (B, N, p·p·C_out)
    c_out = out.shape[-1] // (P * P)
    out = out.reshape(b, GRID, GRID, P, P, c_out).permute(0, 5, 1, 3, 2, 4)  # (B, C, gh, p, gw, p)
    out = out.reshape(b, c_out, GRID * P, GRID * P)
    return out[:, :C]  # learn_sigma: SiT's forward keeps the first half


def save_layout(fmt: str, sd: dict, path, layout: str, model_sd: dict | None = None) -> None:
    """The file each reference writes (train.py's dict, or a released bare state dict)."""
    opt = {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]}
    args = argparse.Namespace(model="SiT-XL/2", image_size=256, multi_blocks_match=[(8, 16)], ckpt=None)
    if layout == "bare":
        obj = sd
    else:
        obj = {"model": model_sd if model_sd is not None else sd, "ema": sd, "opt": opt, "args": args}
        if fmt == "repa":
            obj["steps"] = 4000
        if fmt == "sra":
            obj.update(epoch=3, steps=4000)
    torch.save(obj, path)


def inputs(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, C, GRID * P, GRID * P, generator=g)
    return x, torch.tensor([0.05, 0.5, 0.93]), torch.tensor([0, 3, CLASSES])  # CLASSES = the null class


CASES = [("sit", "bare"), ("sit", "train"), ("layersync", "train"), ("repa", "train"), ("repa", "bare"),
         ("sra", "train")]


@pytest.mark.parametrize("fmt,layout", CASES)
def test_a_loaded_reference_gives_its_velocity_field_in_our_convention(tmp_path, fmt, layout):
    sd = reference_state(fmt)
    save_layout(fmt, sd, tmp_path / "ref.pt", layout)
    model = load_reference_checkpoint(tmp_path / "ref.pt", fmt, num_heads=HEADS)
    cfg = model.config
    assert not model.training
    assert (cfg.depth, cfg.hidden_size, cfg.patch_size, cfg.input_size, cfg.in_channels, cfg.num_classes) == (
        DEPTH, WIDTH, (P, P), (GRID * P, GRID * P), C, CLASSES)
    x, t, y = inputs()
    with torch.no_grad():
        ours = model(x, t, y)
        if fmt in ("sit", "layersync"):
            expected = -reference_forward(sd, x, 1 - t, y)  # their time runs data-ward, their u = x − ε
        else:
            expected = reference_forward(sd, x, t, y)
    assert expected.abs().mean() > 0.1  # a field of size ~1, not a trivial zero
    torch.testing.assert_close(ours, expected, atol=2e-5, rtol=1e-5)


def test_the_old_discrete_time_input_does_not_give_the_reference_field(tmp_path):
    """What the presets did before: 1000·t into SiT's weights; off by O(1), not rounding."""
    sd = reference_state("repa")
    save_layout("repa", sd, tmp_path / "ref.pt", "bare")
    model = load_reference_checkpoint(tmp_path / "ref.pt", "repa", num_heads=HEADS)
    model.t_embedder.time_input = "discrete"
    x, t, y = inputs()
    with torch.no_grad():
        assert (model(x, t, y) - reference_forward(sd, x, t, y)).abs().max() > 0.05


def test_use_ema_false_takes_the_training_weights(tmp_path):
    ema, raw = reference_state("layersync", seed=0), reference_state("layersync", seed=5)
    save_layout("layersync", ema, tmp_path / "ref.pt", "train", model_sd=raw)
    x, t, y = inputs()
    model = load_reference_checkpoint(tmp_path / "ref.pt", "layersync", num_heads=HEADS, use_ema=False)
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, y), -reference_forward(raw, x, 1 - t, y), atol=2e-5, rtol=1e-5)


def test_heads_come_from_the_preset_of_the_width(tmp_path):
    torch.save(reference_state("repa", width=384), tmp_path / "s.pt")  # S: width 384, 6 heads
    model = load_reference_checkpoint(tmp_path / "s.pt", "repa")
    assert (model.config.hidden_size, model.config.num_heads, model.config.depth) == (384, 6, DEPTH)
    torch.save(reference_state("repa"), tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match="width 64 is not a SiT preset's.*pass num_heads"):
        load_reference_checkpoint(tmp_path / "w.pt", "repa")


@pytest.mark.parametrize("fmt", ["sit", "repa"])
def test_export_then_import_is_bit_exact(tmp_path, fmt):
    sd = reference_state(fmt)
    save_layout(fmt, sd, tmp_path / "ref.pt", "bare")
    model = load_reference_checkpoint(tmp_path / "ref.pt", fmt, num_heads=HEADS)
    export_reference_checkpoint(model, fmt, tmp_path / "out.pt")
    again = load_reference_checkpoint(tmp_path / "out.pt", fmt, num_heads=HEADS)
    for (k, a), (k2, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k


def test_sit_export_is_the_released_layout_with_a_zero_sigma_half(tmp_path):
    sd = reference_state("sit")
    save_layout("sit", sd, tmp_path / "ref.pt", "bare")
    model = load_reference_checkpoint(tmp_path / "ref.pt", "sit", num_heads=HEADS)
    out = reference_export_state(model, "sit")
    assert out.keys() == sd.keys()
    for k in sd:
        if not k.startswith("final_layer.linear."):
            assert torch.equal(out[k], sd[k]), k
    w, w_ref = (a.reshape(P * P, 2 * C, -1) for a in (out["final_layer.linear.weight"],
                                                       sd["final_layer.linear.weight"]))
    assert torch.equal(w[:, :C], w_ref[:, :C]) and not w[:, C:].any()
    narrow = reference_export_state(model, "sit", learn_sigma=False)  # SiT's sample.py --ckpt layout
    assert narrow["final_layer.linear.weight"].shape == (P * P * C, WIDTH)


def test_repa_export_has_what_repas_generate_loads(tmp_path):
    sd = reference_state("repa")
    save_layout("repa", sd, tmp_path / "ref.pt", "bare")
    model = load_reference_checkpoint(tmp_path / "ref.pt", "repa", num_heads=HEADS)
    ema = reference_export_state(model, "repa")["ema"]
    assert ema["projectors.0.0.weight"].shape == (2048, WIDTH)
    assert ema["projectors.0.4.weight"].shape == (768, 2048)
    assert all(torch.equal(ema[k], v) for k, v in sd.items() if not k.startswith("projectors."))


def test_export_refuses_a_model_with_another_time_input(tmp_path):
    sd = reference_state("repa")
    save_layout("repa", sd, tmp_path / "ref.pt", "bare")
    model = load_reference_checkpoint(tmp_path / "ref.pt", "repa", num_heads=HEADS)
    with pytest.raises(ValueError, match="time_input='reversed'.*export it with --format repa"):
        export_reference_checkpoint(model, "sit", tmp_path / "out.pt")


class _Payload:
    """Unpickling this would create `marker`: a stand-in for code a hostile file runs."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_checkpoint_holding_a_pickled_object_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    obj = {"model": reference_state("sit"), "ema": reference_state("sit"), "args": _Payload(marker)}
    torch.save(obj, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="pickled object .*open.*never runs code"):
        load_reference_checkpoint(tmp_path / "evil.pt", "sit", num_heads=HEADS)
    assert not marker.exists()


def test_other_positions_and_foreign_files_are_refused_with_the_key(tmp_path):
    sd = reference_state("repa")
    sd["pos_embed"] = sd["pos_embed"] + 0.01
    torch.save(sd, tmp_path / "pos.pt")
    with pytest.raises(CheckpointError, match="pos_embed differs"):
        load_reference_checkpoint(tmp_path / "pos.pt", "repa", num_heads=HEADS)
    del sd["pos_embed"]
    torch.save(sd, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="no 'pos_embed'"):
        load_reference_checkpoint(tmp_path / "x.pt", "repa", num_heads=HEADS)
    torch.save({"ema": {"a": torch.zeros(1)}, "opt": {}}, tmp_path / "y.pt")
    with pytest.raises(CheckpointError, match="no 'x_embedder.proj.weight'"):
        load_reference_checkpoint(tmp_path / "y.pt", "sra", num_heads=HEADS)
    torch.save({"opt": {}, "args": argparse.Namespace(lr=1.0)}, tmp_path / "z.pt")
    with pytest.raises(CheckpointError, match="neither a bare state dict nor a train.py dict holding the"):
        load_reference_checkpoint(tmp_path / "z.pt", "layersync", num_heads=HEADS)


@pytest.mark.parametrize("time_input,view", [("continuous", lambda t: t), ("reversed", lambda t: 1 - t),
                                             ("discrete", lambda t: 1000 * t)])
def test_time_inputs_embed_what_they_name(time_input, view):
    emb = TimestepEmbedder(16, time_input=time_input)
    t = torch.tensor([0.0, 0.3, 1.0])
    torch.testing.assert_close(emb(t), emb.mlp(timestep_embedding(view(t), 256)))


def test_image_presets_embed_time_as_the_reference_they_stand_for():
    from layersync.core.config import apply_overrides
    from layersync.image.run import PRESETS, ImageRecipe

    want = {"sit-b2": "reversed", "sit-l2": "reversed", "sit-xl2": "reversed",
            "sit-xl2-layersync": "reversed", "sit-l2-layersync": "reversed", "sit-xl2-sra": "continuous",
            "sit-b2-sra": "continuous", "sit-xl2-sra-released": "continuous", "sit-xl2-repa": "continuous",
            "sit-l2-repa": "continuous", "sit-b2-repa": "continuous", "digits": "discrete"}
    assert {name: apply_overrides(ImageRecipe(), PRESETS[name]).model.time_input for name in want} == want
    for name, preset in PRESETS.items():  # any later ImageNet preset: REPA/SRA continuous, SiT-based reversed
        if name.startswith("sit-"):
            expected = "continuous" if ("-repa" in name or "-sra" in name) else "reversed"
            assert apply_overrides(ImageRecipe(), preset).model.time_input == expected, name
    released = apply_overrides(ImageRecipe(), PRESETS["sit-xl2-sra-released"]).align
    assert (released.sra, released.sra_weight, released.sra_time_gap, released.sra_variant) == (
        "8:20", 0.5, 0.2, "released")


def test_sample_presets_are_the_papers_and_the_cli_offers_each():
    import argparse as ap

    from layersync.image import cli
    from layersync.image.run import SAMPLE_PRESETS, ImageRecipe

    parser = ap.ArgumentParser()
    cli.add_commands(parser)
    args = parser.parse_args(["sample", "--run", "r", "--sample-preset", "repa-cfg1.8", "--cfg-scale", "2"])
    spec = cli._spec(ImageRecipe(), args)
    assert (spec.sampler, spec.sde_steps, spec.cfg_scale, spec.cfg_interval, spec.cfg_channels) == (
        "sde", 250, 2.0, (0.0, 0.7), 0)  # the flag overrides the preset
    args = parser.parse_args(["sample", "--run", "r", "--sample-preset", "sit-xl2-cfg1.5"])
    sit = cli._spec(ImageRecipe(), args)
    assert (sit.sampler, sit.steps, sit.cfg_scale, sit.cfg_interval, sit.cfg_channels) == (
        "heun2", 125, 1.5, None, 3)  # SiT issue #18: Heun, 125 steps, 250 NFE, CFG 1.5
    ode = cli._spec(ImageRecipe(), parser.parse_args(["sample", "--run", "r", "--sample-preset", "sit-ode"]))
    assert (ode.sampler, ode.atol, ode.rtol, ode.cfg_scale) == ("dopri5", 1e-6, 1e-3, 1.0)
    choices = next(a for a in parser._subparsers._group_actions[0].choices["sample"]._actions
                   if a.dest == "sample_preset").choices
    assert tuple(choices) == tuple(SAMPLE_PRESETS)


def _guided(sd, x, s, y, scale, channels, sign):
    """Reference CFG on the reference's output u (sign·u in our convention), as forward_with_cfg / REPA."""
    cond = reference_forward(sd, x, s, y)
    null = reference_forward(sd, x, s, torch.full_like(y, CLASSES))
    mix = null + scale * (cond - null)
    return sign * torch.cat([mix[:, :channels], cond[:, channels:]], 1)


def test_sit_sde_preset_with_3_channel_cfg_on_a_loaded_sit_is_sits_own_sde(tmp_path):
    """SiT's SDE in its own time (transport.py: s = 0 noise → 1 − 0.04, drift u + w·score, w = σ = 1 − s,
    score = (s·u − x)/(1 − s) on the linear path, then a noise-free mean step of 0.04), CFG 1.5 on 3
    channels (sample_ddp.py SDE --cfg-scale 1.5)."""
    import dataclasses

    from layersync.core.interpolants import Interpolant
    from layersync.core.recipe import SampleSpec, sample
    from layersync.image.run import SAMPLE_PRESETS

    sd = reference_state("sit")
    save_layout("sit", sd, tmp_path / "ref.pt", "bare")
    model = load_reference_checkpoint(tmp_path / "ref.pt", "sit", num_heads=HEADS)
    x0, _, y = inputs(2)
    spec = dataclasses.replace(SampleSpec(), **{**SAMPLE_PRESETS["sit-sde"], "sde_steps": 6, "cfg_scale": 1.5,
                                                "cfg_channels": 3})
    ours, nfe = sample(model, Interpolant(), x0, y, None, spec, generator=torch.Generator().manual_seed(3))

    g = torch.Generator().manual_seed(3)  # the same step noise, drawn in the same order
    times = torch.linspace(0, 1 - 0.04, 6, dtype=torch.float64).tolist()
    x = x0.clone()
    with torch.no_grad():
        def drift(x, s):
            u = _guided(sd, x, torch.full((3,), s), y, 1.5, 3, sign=1.0)
            return u + (1 - s) * (s * u - x) / (1 - s)

        for s, s_next in zip(times[:-1], times[1:]):
            dt = s_next - s
            x = x + drift(x, s) * dt + math.sqrt(2 * (1 - s) * dt) * torch.randn(x.shape, generator=g)
        x = x + drift(x, times[-1]) * 0.04
    assert nfe == 6
    torch.testing.assert_close(ours, x, atol=1e-4, rtol=1e-4)


def test_sit_cfg_preset_on_a_loaded_sit_is_heun_in_sits_time_with_every_step_corrected(tmp_path):
    """SiT-XL/2's FID setting (SiT issue #18: Heun ODE, 125 steps, 250 NFE, CFG 1.5; torchdiffeq's heun2 on
    s = 0 noise … 1 data): k1 = u(x, s), k2 = u(x + h·k1, s + h), x += h/2·(k1 + k2) on EVERY step, the last
    one (ending at the data, s = 1) included, CFG on 3 channels; fewer steps here."""
    import dataclasses

    from layersync.core.interpolants import Interpolant
    from layersync.core.recipe import SampleSpec, sample
    from layersync.image.run import SAMPLE_PRESETS

    sd = reference_state("sit")
    save_layout("sit", sd, tmp_path / "ref.pt", "bare")
    model = load_reference_checkpoint(tmp_path / "ref.pt", "sit", num_heads=HEADS)
    x0, _, y = inputs(7)
    steps = 4
    spec = dataclasses.replace(SampleSpec(), **{**SAMPLE_PRESETS["sit-xl2-cfg1.5"], "steps": steps})
    ours, nfe = sample(model, Interpolant(), x0, y, None, spec)

    def u(x, s):
        return _guided(sd, x, torch.full((3,), s), y, 1.5, 3, sign=1.0)

    x, h = x0.clone(), 1.0 / steps
    with torch.no_grad():
        for i in range(steps):
            s = i * h
            k1 = u(x, s)
            x = x + 0.5 * h * (k1 + u(x + h * k1, s + h))
    assert nfe == 2 * steps  # 125 steps → 250 NFE, as SiT's author counts them
    torch.testing.assert_close(ours, x, atol=1e-5, rtol=1e-5)


def test_repa_cfg_preset_on_a_loaded_repa_is_repas_own_sde(tmp_path):
    """REPA samplers.py euler_maruyama_sampler: t = linspace(1, 0.04, N) then 0, diffusion 2t, drift
    v − ½·2t·score, score = (α/α'·v − x)/(σ² − α/α'·σ'σ) = −(x + (1 − t)v)/t; CFG 1.8 where 0 ≤ t ≤ 0.7."""
    import dataclasses

    from layersync.core.interpolants import Interpolant
    from layersync.core.recipe import SampleSpec, sample
    from layersync.image.run import SAMPLE_PRESETS

    sd = reference_state("repa")
    save_layout("repa", sd, tmp_path / "ref.pt", "bare")
    model = load_reference_checkpoint(tmp_path / "ref.pt", "repa", num_heads=HEADS)
    x0, _, y = inputs(4)
    spec = dataclasses.replace(SampleSpec(), **{**SAMPLE_PRESETS["repa-cfg1.8"], "sde_steps": 6})
    ours, _ = sample(model, Interpolant(), x0, y, None, spec, generator=torch.Generator().manual_seed(5))

    g = torch.Generator().manual_seed(5)
    times = torch.linspace(1.0, 0.04, 6, dtype=torch.float64).tolist() + [0.0]
    x = x0.clone()
    with torch.no_grad():
        def drift(x, t):
            scale = 1.8 if 0.0 <= t <= 0.7 else 1.0
            v = _guided(sd, x, torch.full((3,), t), y, scale, C, sign=1.0)
            return v - t * (-(x + (1 - t) * v) / t)

        for t, t_next in zip(times[:-2], times[1:-1]):
            dt = t_next - t
            noise = torch.randn(x.shape, generator=g)
            x = x + drift(x, t) * dt + math.sqrt(2 * t) * math.sqrt(abs(dt)) * noise
        x = x + (0.0 - times[-2]) * drift(x, times[-2])
    torch.testing.assert_close(ours, x, atol=1e-4, rtol=1e-4)


def test_sit_ode_preset_on_a_loaded_sit_is_sits_dopri5(tmp_path):
    """SiT's ODE: torchdiffeq dopri5 on dx/ds = u(x, s) from s = 0 (noise) to 1, atol 1e-6, rtol 1e-3."""
    import dataclasses

    from torchdiffeq import odeint

    from layersync.core.interpolants import Interpolant
    from layersync.core.recipe import SampleSpec, sample
    from layersync.image.run import SAMPLE_PRESETS

    sd = reference_state("sit")
    save_layout("sit", sd, tmp_path / "ref.pt", "bare")
    model = load_reference_checkpoint(tmp_path / "ref.pt", "sit", num_heads=HEADS)
    x0, _, y = inputs(6)
    spec = dataclasses.replace(SampleSpec(), **SAMPLE_PRESETS["sit-ode"])
    ours, nfe = sample(model, Interpolant(), x0, y, None, spec)
    with torch.no_grad():
        theirs = odeint(lambda s, x: reference_forward(sd, x, s.expand(3), y), x0, torch.tensor([0.0, 1.0]),
                        method="dopri5", atol=1e-6, rtol=1e-3)[-1]
    assert nfe > 6, nfe  # adaptive: more than one step
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
