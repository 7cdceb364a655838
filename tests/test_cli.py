"""Command line: bad input gives one clear line and a non-zero exit, never a traceback; --dry-run, --help."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "image_sit.py"
ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}


def recipe_main(argv):
    """Run the image recipe's main in-process, as its __main__ does."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("image_sit_recipe", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from layersync.core.cli_util import run_main

    run_main(lambda: module.main(argv), prog="recipes/image_sit.py")


def one_line_error(capsys, fn) -> str:
    with pytest.raises(SystemExit) as exit_info:
        fn()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("argv, expected", [
    (["--preset=imagenet-xxl"], "unknown preset 'imagenet-xxl'"),
    (["--train.no_such_key=1"], "unknown key 'train.no_such_key'"),
    (["--train.lr=fast"], "lr='fast' is not a number"),
    (["--path.path=cosine"], "is not one of linear, gvp, vp, vp_cosine"),
    (["--align.layersync=3:9"], "1 ≤ student < teacher ≤ 8"),
    (["--align.layersync=6:3"], "teacher"),
    (["--align.layersync=0:4"], "1 ≤ student < teacher ≤ 8"),
    (["--data=/no/such/latents"], "no such file or folder"),
    (["--preset=sit-xl2"], "dataset=latents needs --data=FOLDER, written by `layersync image prepare"),
    (["--preset=sit-xl2", f"--data={ROOT}"], "index.json does not exist; make it with `layersync image"),
    ([f"--data={ROOT}"], "is read only with --dataset=latents"),
    (["--train.global_batch_size=63", "--train.grad_accum_steps=2"],
     "train.global_batch_size=63 is not a multiple of grad_accum_steps=2"),
    (["--lr"], "needs a value"),
])
def test_recipe_bad_input_is_one_clear_line(capsys, tmp_path, argv, expected):
    err = one_line_error(capsys, lambda: recipe_main([f"--run_dir={tmp_path}", *argv]))
    assert expected in err


def test_recipe_dry_run_prints_the_resolved_config_and_trains_nothing(capsys, tmp_path):
    recipe_main([f"--run_dir={tmp_path}/run", "--dry-run", "--train.total_steps=7", "--layersync_weight=0.3"])
    out = capsys.readouterr().out
    config = json.loads(out[: out.rindex("}") + 1])
    assert config["train"]["total_steps"] == 7 and config["align"]["layersync_weight"] == 0.3
    assert config["align"]["layersync"] == "3:6" and config["model"]["depth"] == 8  # the digits preset
    assert "parameters" in out and not (tmp_path / "run").exists()


def test_recipe_help_lists_presets_and_keys(capsys):
    with pytest.raises(SystemExit) as e:
        recipe_main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "digits-vanilla" in out and "--train.total_steps" in out and "--align.layersync" in out


def layersync(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "layersync.cli", *args], capture_output=True, text=True,
                          env=ENV, timeout=120)


def test_layersync_help_and_bad_subcommand():
    ok = layersync("image", "sample", "--help")
    assert ok.returncode == 0 and "--per-class" in ok.stdout
    bad = layersync("image", "paint")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr and "Traceback" not in bad.stderr


def test_sample_with_corrupt_or_foreign_checkpoint_is_one_clear_line(tmp_path):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"PK\x03\x04 not really a checkpoint")
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": {}, "ema": {}, "config": {"run_dir": "x", "flavour": "audio"}}, foreign)
    for path, expected in ((corrupt, "is corrupt"), (foreign, "not written by the image recipe")):
        proc = layersync("image", "sample", "--run", str(tmp_path), "--ckpt", str(path))
        assert proc.returncode == 2, proc.stderr
        assert expected in proc.stderr and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    missing = layersync("image", "sample", "--run", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_evaluate_rejects_a_file_that_is_not_samples(tmp_path):
    bad = tmp_path / "x.npz"
    bad.write_bytes(b"nonsense")
    proc = layersync("image", "evaluate", str(bad))
    assert proc.returncode == 2 and "is not a samples .npz" in proc.stderr and "Traceback" not in proc.stderr


def cli_main(*argv: str) -> None:
    from layersync.cli import main

    main(list(argv))


def test_fid_evaluation_without_inception_weights_or_reference_is_one_line(capsys, tmp_path, monkeypatch):
    import numpy as np

    monkeypatch.delenv("LAYERSYNC_WEIGHTS", raising=False)
    samples = tmp_path / "samples.npz"
    np.savez(samples, arr_0=np.zeros((4, 16, 16, 3), np.uint8), arr_1=np.zeros(4, np.int64))
    weights = str(tmp_path / "none.pth")
    cases = ((tmp_path / "nope.npz", "reference batch"), (samples, "pt_inception-2015-12-05"))
    for reference, expected in cases:
        err = one_line_error(capsys, lambda: cli_main("image", "evaluate", str(samples), "--reference",
                                                      str(reference), "--inception", weights))
        assert expected in err


def test_prepare_from_a_missing_source_is_one_clear_line(capsys, tmp_path):
    err = one_line_error(capsys, lambda: cli_main("image", "prepare", str(tmp_path / "no_imagenet"),
                                                  str(tmp_path / "out")))
    assert "image source" in err and "does not exist" in err and not (tmp_path / "out").exists()


def test_only_user_errors_are_one_line_and_bugs_keep_their_traceback(capsys, monkeypatch):
    from layersync.core.cli_util import run_main
    from layersync.core.errors import UserValueError

    monkeypatch.delenv("LAYERSYNC_DEBUG", raising=False)

    def refuse():
        raise UserValueError("--num=3 is too few; use --num=33 or more")

    assert one_line_error(capsys, lambda: run_main(refuse, prog="p")) == \
        "p: error: --num=3 is too few; use --num=33 or more"
    for bug in (ValueError("cannot reshape array"), KeyError("weight"), FileNotFoundError(2, "x"),
                NotImplementedError()):
        def buggy(bug=bug):
            raise bug

        with pytest.raises(type(bug)):  # propagates: Python prints the traceback
            run_main(buggy, prog="p")


def test_debug_switch_shows_the_traceback_of_a_user_error(monkeypatch):
    from layersync.core.cli_util import run_main
    from layersync.core.errors import UserValueError

    def refuse():
        raise UserValueError("bad")

    monkeypatch.setenv("LAYERSYNC_DEBUG", "1")
    with pytest.raises(UserValueError):
        run_main(refuse, prog="p")
    monkeypatch.delenv("LAYERSYNC_DEBUG")
    monkeypatch.setattr(sys, "argv", ["prog", "--debug", "--x=1"])
    with pytest.raises(UserValueError):
        run_main(refuse, prog="p")
    assert sys.argv == ["prog", "--x=1"]  # the switch is not seen as a config override
    proc = subprocess.run([sys.executable, str(RECIPE), "--debug", "--train.lr=fast"], capture_output=True,
                          text=True, env={**ENV, "PYTHONPATH": str(ROOT.parent)}, timeout=300)
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "ConfigError" in proc.stderr
