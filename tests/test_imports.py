"""Every module of the package and every heavy optional path imports: a broken dependency fails here, once, by name.

When an upstream release breaks an import (torchaudio 2.11.1 needed a newer torch than 2.11.0 and took diffusers and
transformers down with it), this file says which package is at fault instead of dozens of scattered errors.
"""

import importlib
import os
import pkgutil

import pytest

import layersync


def package_modules() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(layersync.__path__, prefix="layersync."):
        if ".tests" not in info.name and ".benchmarks" not in info.name and ".recipes" not in info.name:
            names.append(info.name)
    return sorted(names)


def test_the_package_has_the_documented_subpackages():
    top = {name.split(".")[1] for name in package_modules()}
    assert {"core", "image", "audio", "video", "motion", "metrics", "cli"} <= top


@pytest.mark.parametrize("name", package_modules())
def test_every_module_of_the_package_imports(name):
    importlib.import_module(name)


def test_the_installed_torch_family_is_the_pinned_one():
    import torch
    import torchaudio
    import torchvision

    assert (torch.__version__.split("+")[0], torchvision.__version__.split("+")[0],
            torchaudio.__version__.split("+")[0]) == ("2.11.0", "0.26.0", "2.11.0"), (
        "install with: pip install -e \".[dev]\" -c constraints.txt")


def test_torchaudio_loads_its_compiled_library():
    import torch
    import torchaudio

    # An ABI mismatch with torch shows up as an undefined symbol when the library is first used.
    wave = torch.sin(torch.linspace(0, 100, 1600))[None]
    out = torchaudio.functional.resample(wave, 16000, 8000)
    assert out.shape == (1, 800)


def test_diffusers_vae_and_transformers_text_encoder_import():
    from diffusers import AutoencoderKL  # noqa: F401  (SD-VAE: image, video and audio latents)
    from transformers import CLIPTextModel  # noqa: F401  (motion's text encoder)


def test_peft_imports():
    import peft  # noqa: F401  (recipes/finetune_lora.py)


def test_laion_clap_imports_offline():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # tests/conftest.py: no test may reach a model hub
    import laion_clap  # noqa: F401  (CLAP FAD)

    import numpy

    assert int(numpy.__version__.split(".")[0]) < 2, "laion-clap needs numpy < 2"
