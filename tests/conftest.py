"""Test-session settings: no test reaches a model hub (every pretrained network loads from a local path)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
