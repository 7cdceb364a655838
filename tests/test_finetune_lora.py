"""LoRA fine-tuning of diffusers transformers with LayerSync: the backbone adapter (DiT, Wan), where the
LayerSync gradient goes, exact resume of recipes/finetune_lora.py, pretrained weights from a local folder."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from layersync.core import layersync_loss
from layersync.core.diffusers_backbone import DiffusersBackbone, add_lora, tiny_transformer

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "finetune_lora.py"
TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TOY = ["--train.total_steps=4", "--train.global_batch_size=8", "--train.ckpt_every=2", "--train.log_every=1",
       "--train.sample_every=0", "--sample.steps=2", "--sample_count=4", "--lora_rank=4"]


def recipe_main(argv):
    spec = importlib.util.spec_from_file_location("finetune_lora_recipe", RECIPE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its config is a dataclass, which looks its module up
    spec.loader.exec_module(module)
    return module.main(argv)


def backbone(family: str, depth: int = 4) -> DiffusersBackbone:
    torch.manual_seed(0)
    channels = 1 if family == "dit" else 3
    model = DiffusersBackbone(tiny_transformer(family, channels, depth=depth), family)
    add_lora(model, rank=4, alpha=4.0, targets=TARGETS)
    return model


def inputs(family: str, batch: int = 3):
    g = torch.Generator().manual_seed(1)
    if family == "dit":
        return torch.randn(batch, 1, 8, 8, generator=g), torch.randint(0, 10, (batch,), generator=g)
    return torch.randn(batch, 3, 4, 8, 8, generator=g), None


@pytest.mark.parametrize("family", ["dit", "wan"])
def test_layersync_gradient_reaches_only_the_lora_weights_of_blocks_up_to_the_student(family):
    model = backbone(family)
    with torch.no_grad():  # LoRA's B starts at 0, which would hide whether A is reached: make both non-zero
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    x, cond = inputs(family)
    out = model(x, torch.rand(3), cond, capture=(2, 4))
    assert out.pred.shape == x.shape and out.hidden[2].shape[:2] == out.hidden[4].shape[:2]
    layersync_loss(out.hidden[2], out.hidden[4]).backward()
    blocks = "transformer_blocks" if family == "dit" else "blocks"
    reached: dict[int, bool] = {}
    for name, p in model.named_parameters():
        if "lora_" not in name:
            assert p.grad is None, name  # the base is frozen
            continue
        block = int(name.split(f"{blocks}.")[1].split(".")[0]) + 1  # numbered from 1
        hit = p.grad is not None and bool(p.grad.abs().sum() > 0)
        reached[block] = reached.get(block, False) or hit
        if block > 2:
            assert not hit, name  # the teacher (block 4) is detached: nothing past the student moves
    assert reached == {1: True, 2: True, 3: False, 4: False}


def test_dit_condition_drop_is_the_null_class_once_per_sample_not_diffusers_random_drop():
    model = backbone("dit").train()  # diffusers would drop labels at random in every block in train mode
    x, labels = inputs("dit")
    t = torch.rand(3)
    first, again = model(x, t, labels), model(x, t, labels)
    assert torch.equal(first, again)  # no hidden randomness: a resumed step replays exactly
    dropped = model(x, t, labels, force_drop=torch.tensor([True, False, True]))
    null = model(x, t, torch.full_like(labels, 10))
    assert torch.equal(dropped[[0, 2]], null[[0, 2]]) and torch.equal(dropped[1], first[1])


def test_backbone_under_torch_compile_captures_what_eager_does():
    model = backbone("dit").eval()
    x, labels = inputs("dit")
    t = torch.rand(3)
    eager = model(x, t, labels, capture=(1, 3))
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager")  # the Trainer's --train.compile, without codegen
    for _ in range(2):  # the second call reuses the graph: the hooks must report into the new context
        out = compiled(x, t, labels, capture=(1, 3))
        assert torch.allclose(out.pred, eager.pred, atol=1e-6)
        assert all(torch.allclose(out.hidden[k], eager.hidden[k], atol=1e-6) for k in (1, 3))
    torch._dynamo.reset()


def test_lora_targets_that_match_nothing_are_refused_by_name():
    model = DiffusersBackbone(tiny_transformer("dit", 1, depth=2), "dit")
    with pytest.raises(ValueError, match="lora_targets=query matched no Linear layer"):
        add_lora(model, rank=4, alpha=4.0, targets=("query",))


def test_resumed_run_replays_the_uninterrupted_one_exactly(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    recipe_main([f"--run_dir={straight}", *TOY])
    recipe_main([f"--run_dir={resumed}", *TOY[1:], "--train.total_steps=2"])
    recipe_main([f"--run_dir={resumed}", *TOY])

    def losses(run):
        rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
        return {r["step"]: (r["loss"], r["flow_loss"], r["layersync/loss"], r["grad_norm"]) for r in rows}

    assert losses(resumed) == losses(straight) and sorted(losses(straight)) == [1, 2, 3, 4]
    a = torch.load(straight / "checkpoints" / "step_00000004.pt", weights_only=False)
    b = torch.load(resumed / "checkpoints" / "step_00000004.pt", weights_only=False)
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    lora = [k for k in a["model"] if "lora_" in k]
    assert lora and set(a["optimizer"]["state"]) == {f"model.{k}" for k in lora}  # only LoRA is optimised
    assert (straight / "samples_ema.png").is_file()
    assert torch.load(straight / "samples" / "step_00000004.pt").shape == (4, 1, 8, 8)


def test_pretrained_wan_from_a_local_folder_trains_on_latents_with_text(tmp_path):
    torch.manual_seed(0)
    tiny_transformer("wan", 3, depth=4).save_pretrained(tmp_path / "wan" / "transformer")  # a pipeline folder
    torch.save({"x": torch.randn(8, 3, 4, 8, 8), "cond": torch.randn(8, 5, 16)}, tmp_path / "latents.pt")
    run = tmp_path / "run"
    recipe_main([f"--run_dir={run}", "--preset=wan-balls", "--pretrained=true",
                 f"--model_path={tmp_path / 'wan'}", f"--data={tmp_path / 'latents.pt'}",
                 "--align.layersync=2:3", *TOY[:1], "--train.ckpt_every=4",
                 *TOY[2:], "--sample_count=2", "--cond_dropout=0.5", "--gradient_checkpointing=true"])
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and all(r["layersync/cos_2_3"] > -1 for r in rows)
    assert torch.load(run / "samples" / "step_00000004.pt").shape == (2, 3, 4, 8, 8)
    assert not (run / "samples_ema.png").exists()  # latents: no decoder here


def test_dry_run_prints_the_model_and_refuses_mixed_sources(capsys, tmp_path):
    recipe_main([f"--run_dir={tmp_path}/run", "--dry-run", "--preset=wan-balls"])
    out = capsys.readouterr().out
    assert '"family": "wan"' in out and "WanTransformer3DModel: 8 blocks" in out and "LayerSync" in out
    recipe_main(["--dry-run", "--preset=wan2.1-t2v-1.3b"])
    assert '"layersync": "9:17"' in capsys.readouterr().out
    with pytest.raises(ValueError, match="--model_path and --data are read with --pretrained=true"):
        recipe_main([f"--run_dir={tmp_path}/run", f"--data={tmp_path}/x.pt"])
    with pytest.raises(ValueError, match="pretrained=true needs --model_path"):
        recipe_main([f"--run_dir={tmp_path}/run", "--preset=dit-xl-2-256", f"--data={tmp_path}/x.pt"])
