"""capture_blocks: the captured tensors are the blocks' own outputs (diffusers DiT, tuple outputs, token
layouts), no reference survives the context, and it holds under gradient checkpointing and torch.compile."""

from __future__ import annotations

import gc
import re
import weakref
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from layersync.core import capture_blocks, layersync_loss
from layersync.core.capture import hook_blocks, to_tokens


class Block(nn.Module):
    """A residual block whose output layout and tuple-ness the tests choose."""

    def __init__(self, width: int, tuple_out: bool = False):
        super().__init__()
        self.lin, self.tuple_out = nn.Linear(width, width), tuple_out

    def forward(self, h):
        h = h + torch.tanh(self.lin(h))
        return (h.sum(), h) if self.tuple_out else h


class Stack(nn.Module):
    def __init__(self, depth=4, width=8, tuple_out=False, ckpt=None):
        super().__init__()
        self.blocks = nn.ModuleList(Block(width, tuple_out) for _ in range(depth))
        self.tuple_out, self.ckpt = tuple_out, ckpt

    def forward(self, h):
        outs = []
        for block in self.blocks:
            reentrant = self.ckpt == "reentrant"
            out = block(h) if self.ckpt is None else checkpoint(block, h, use_reentrant=reentrant)
            h = out[1] if self.tuple_out else out
            outs.append(h)
        return h, outs


def tiny_dit(depth=4):
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(0)
    return DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=1, num_layers=depth,
                                 sample_size=8, patch_size=2, num_embeds_ada_norm=10).eval()


def test_captured_diffusers_dit_outputs_equal_its_blocks_run_by_hand():
    model = tiny_dit()
    x, t, y = torch.randn(3, 1, 8, 8), torch.tensor([10.0, 500.0, 900.0]), torch.tensor([1, 2, 3])
    with capture_blocks(model.transformer_blocks, (1, 3, 4)) as hidden:
        model(x, t, y)
    h, expected = model.pos_embed(x), {}  # (B, N, D): the blocks' input, as DiT's forward builds it
    for k, block in enumerate(model.transformer_blocks, start=1):
        h = expected[k] = block(h, timestep=t, class_labels=y)
    assert sorted(hidden) == [1, 3, 4]
    for k in hidden:
        assert hidden[k].shape == (3, 16, 16)
        assert torch.equal(hidden[k], expected[k])


def test_tuple_outputs_take_the_chosen_element_and_refuse_without_it():
    model, h0 = Stack(tuple_out=True), torch.randn(2, 5, 8)
    with capture_blocks(model.blocks, (2, 4), take=1) as hidden:
        _, outs = model(h0)
    assert torch.equal(hidden[2], outs[1]) and torch.equal(hidden[4], outs[3])
    with pytest.raises(ValueError, match=r"block 2 returns a 2-tuple \[\(\), \(2, 5, 8\)\]; pass take="):
        with capture_blocks(model.blocks, (2,)):
            model(h0)


def test_layouts_turn_frames_and_channel_first_maps_into_tokens():
    x = torch.randn(2, 3, 4, 6)  # (B, T, N, D)
    tokens = to_tokens(x, "BTND")  # (B, T·N, D), frame-major
    assert tokens.shape == (2, 12, 6) and torch.equal(tokens[1, 2 * 4 + 3], x[1, 2, 3])
    maps = torch.randn(2, 6, 3, 5)  # (B, D, H, W)
    tokens = to_tokens(maps, "BC...")
    assert tokens.shape == (2, 15, 6) and torch.equal(tokens[1, 2 * 5 + 4], maps[1, :, 2, 4])
    video = torch.randn(2, 6, 2, 3, 5)  # (B, D, T, H, W)
    assert torch.equal(to_tokens(video, "BC...")[0, 1 * 15 + 2 * 5 + 1], video[0, :, 1, 2, 1])
    with pytest.raises(ValueError, match="layout 'BND' expects"):
        to_tokens(x, "BND")

    class FrameBlock(nn.Module):  # a video block that keeps frames apart: (B, T, N, D)
        def forward(self, h):
            return h * 2

    blocks = nn.ModuleList([FrameBlock(), FrameBlock()])
    with capture_blocks(blocks, (2,), layout="BTND") as hidden:
        out = blocks[1](blocks[0](x))
    assert torch.equal(hidden[2], out.flatten(1, 2))


def test_bad_block_numbers_and_layouts_are_refused_by_name():
    model = Stack(depth=4)
    valid = r"invalid block 0; blocks are numbered from 1 and need 1 ≤ block ≤ 4"
    with pytest.raises(ValueError, match=valid):
        with capture_blocks(model.blocks, (0, 2)):
            pass
    with pytest.raises(ValueError, match="invalid block 5"):
        with capture_blocks(model.blocks, (5,)):
            pass
    with pytest.raises(ValueError, match="unknown layout 'BHWC'"):
        with capture_blocks(model.blocks, (1,), layout="BHWC"):
            pass


def test_no_reference_survives_the_context_and_a_second_forward_inside_is_refused():
    model, h0 = Stack(), torch.randn(2, 5, 8)
    with capture_blocks(model.blocks, (2,)) as hidden:
        model(h0)
    ref = weakref.ref(hidden[2])
    del hidden
    gc.collect()
    assert ref() is None  # neither the block, its hook nor the context kept the tensor
    for _ in range(3):  # one hook per block however many contexts, a no-op outside them
        with capture_blocks(model.blocks, (2,)):
            model(h0)
    assert len(model.blocks[1]._forward_hooks) == 1
    with pytest.raises(RuntimeError, match="block 2 ran twice in one context"):
        with capture_blocks(model.blocks, (2,)):
            model(h0)
            model(h0)
    with pytest.raises(RuntimeError, match=r"never ran blocks \[3\]"):
        with capture_blocks(model.blocks, (3,)):
            pass


def test_layersync_through_the_capture_trains_only_blocks_up_to_the_student():
    model, h0 = Stack(depth=4), torch.randn(2, 5, 8)
    with capture_blocks(model.blocks, (2, 4)) as hidden:
        model(h0)
    layersync_loss(hidden[2], hidden[4]).backward()
    grads = [block.lin.weight.grad for block in model.blocks]
    assert all(g is not None and g.abs().sum() > 0 for g in grads[:2])
    assert all(g is None for g in grads[2:])


def test_non_reentrant_checkpointing_keeps_values_and_gradients_and_reentrant_is_refused():
    torch.manual_seed(0)
    plain, h0 = Stack(), torch.randn(2, 5, 8)
    ckpt = Stack(ckpt="non_reentrant")
    ckpt.load_state_dict(plain.state_dict())
    got = {}
    for name, model in (("plain", plain), ("ckpt", ckpt)):
        with capture_blocks(model.blocks, (1, 3)) as hidden:
            out, _ = model(h0)
            # backward inside the context: the checkpoint re-runs blocks 1 and 3, which must not count twice
            (out.square().mean() + layersync_loss(hidden[1], hidden[3])).backward()
        got[name] = (hidden, [b.lin.weight.grad.clone() for b in model.blocks])
    assert all(torch.equal(got["plain"][0][k], got["ckpt"][0][k]) for k in (1, 3))
    assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(got["plain"][1], got["ckpt"][1]))
    reentrant = Stack(ckpt="reentrant")
    with pytest.raises(RuntimeError, match="reentrant gradient checkpointing"):
        with capture_blocks(reentrant.blocks, (1,)):
            reentrant(h0.clone().requires_grad_())


def test_torch_compile_sees_each_context_and_flags_blocks_hooked_too_late():
    torch._dynamo.reset()  # dynamo's cache is per code object: no graph of Stack from elsewhere may be reused
    torch.manual_seed(0)
    h0 = torch.randn(2, 5, 8)
    late = Stack()
    late_compiled = torch.compile(late, backend="aot_eager")
    late_compiled(h0)  # traced without hooks: dynamo does not guard on hooks, so it never calls them
    with pytest.raises(RuntimeError, match=r"never ran blocks \[2\].*hook_blocks"):
        with capture_blocks(late.blocks, (2,)):
            late_compiled(h0)
    torch._dynamo.reset()
    model = Stack()
    hook_blocks(model.blocks)  # before compiling: the traced graph calls the (no-op) hooks
    compiled = torch.compile(model, backend="aot_eager")
    for scale in (1.0, 2.0):  # two contexts, two inputs: each gets its own, fresh values
        with capture_blocks(model.blocks, (2, 3)) as hidden:
            compiled(h0 * scale)
        _, eager = model(h0 * scale)
        assert torch.allclose(hidden[2], eager[1]) and torch.allclose(hidden[3], eager[2])
        assert hidden[2].grad_fn is not None
    torch._dynamo.reset()


def test_readme_diffusers_example_runs_and_captures_the_tokens():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## LayerSync in your own model"):readme.index("## LoRA fine-tuning")]
    code = re.findall(r"```python\n(.*?)```", section, re.S)[1]  # the second example: a diffusers DiT
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    hidden, dit = scope["hidden"], scope["dit"]
    assert sorted(hidden) == [3, 6] and hidden[3].shape == (4, 64, 64)
    assert torch.isfinite(scope["loss"]) and dit.transformer_blocks[0].attn1.to_q.weight.grad is not None


def test_captured_wan_outputs_equal_its_blocks_run_by_hand():
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    wan = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                                in_channels=3, out_channels=3, text_dim=8, freq_dim=16, ffn_dim=32,
                                num_layers=3, rope_max_seq_len=32).eval()
    x, t, text = torch.randn(2, 3, 2, 4, 4), torch.tensor([100.0, 800.0]), torch.randn(2, 5, 8)
    with capture_blocks(wan.blocks, (1, 3)) as hidden:
        wan(x, t, text)
    # The blocks' inputs as Wan's forward builds them: patch tokens (frame-major), rotary table, modulation.
    rotary = wan.rope(x)
    h = wan.patch_embedding(x).flatten(2).transpose(1, 2)  # (B, F·H·W, D)
    _, modulation, context, _ = wan.condition_embedder(t, text, None)
    modulation = modulation.unflatten(1, (6, -1))
    expected = {}
    for k, block in enumerate(wan.blocks, start=1):
        h = expected[k] = block(h, context, modulation, rotary)
    assert hidden[1].shape == (2, 2 * 2 * 2, 24)
    assert torch.equal(hidden[1], expected[1]) and torch.equal(hidden[3], expected[3])


def test_flux_dual_then_single_stream_blocks_count_on_and_take_the_image_tokens():
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    flux = FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=2, num_single_layers=2,
                                  attention_head_dim=16, num_attention_heads=2, joint_attention_dim=8,
                                  pooled_projection_dim=8, axes_dims_rope=(4, 6, 6)).eval()
    image, text = torch.randn(2, 6, 4), torch.randn(2, 3, 8)  # (B, image tokens, C), (B, text tokens, D_text)
    ids = torch.zeros(6, 3)
    blocks = [*flux.transformer_blocks, *flux.single_transformer_blocks]  # dual 1–2, single 3–4
    seen = {}
    for k, block in enumerate(blocks, start=1):  # the blocks' own second output, recorded independently
        block.register_forward_hook(lambda m, a, out, k=k: seen.__setitem__(k, out[1]))
    with capture_blocks(blocks, (2, 3, 4), take=1) as hidden:
        flux(image, text, torch.randn(2, 8), torch.tensor([0.5, 0.9]), img_ids=ids, txt_ids=torch.zeros(3, 3))
    assert all(hidden[k].shape == (2, 6, 32) and torch.equal(hidden[k], seen[k]) for k in (2, 3, 4))
