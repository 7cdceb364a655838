"""Frozen text encoders from local folders: a tiny random CLIP, the packaged MiniLM, the caption cache."""

from __future__ import annotations

import json
import string
from dataclasses import dataclass

import pytest
import torch

from layersync.core.weights import MissingWeightsError
from layersync.motion import text as T


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """CLIP's text tower and tokenizer at toy size with random weights, saved as transformers saves them."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

    folder = tmp_path_factory.mktemp("tiny_clip")
    letters = list(string.ascii_lowercase)
    vocab = {tok: i for i, tok in enumerate(letters + [c + "</w>" for c in letters]
                                            + ["<|startoftext|>", "<|endoftext|>"])}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")  # no merges: one token per letter
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    config = CLIPTextConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                            num_attention_heads=2, max_position_embeddings=32, projection_dim=8,
                            bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                            pad_token_id=vocab["<|endoftext|>"])
    torch.manual_seed(0)
    CLIPTextModelWithProjection(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_clip_encoder_gives_the_projected_end_token_of_at_most_22_tokens(tiny_clip):
    enc = T.load_text_encoder("clip", str(tiny_clip))
    assert enc.dim == 8 and enc.identity.startswith("clip-")
    out = enc.encode(["a person walks", "abc", "a person walks"])
    assert out.shape == (3, 8) and out.dtype == torch.float32
    torch.testing.assert_close(out[0], out[2])
    assert not torch.allclose(out[0], out[1])
    # 20 letters fill MDM's window (start + 20 + end); anything after them is cut off.
    long = "abcdefghij klmnopqrst"
    torch.testing.assert_close(enc.encode([long])[0], enc.encode([long + " uvw xyz"])[0])
    assert not torch.allclose(enc.encode(["abcdefghij klmnopqrsa"])[0], enc.encode([long])[0])
    tok = enc.tokenizer([long + " uvw"], truncation=True, max_length=T.CLIP_CONTEXT)
    assert len(tok["input_ids"][0]) == 22


def test_encoders_without_weights_say_where_to_get_them(tmp_path, tiny_clip):
    with pytest.raises(MissingWeightsError, match="needs --text_encoder_path"):
        T.load_text_encoder("clip", "")
    with pytest.raises(MissingWeightsError, match="not found"):
        T.load_text_encoder("clip", str(tmp_path))
    with pytest.raises(MissingWeightsError, match="expected 53aa5117"):  # not the packaged MiniLM's file
        T.load_text_encoder("minilm", str(tiny_clip))
    with pytest.raises(ValueError, match="choose clip or minilm"):
        T.load_text_encoder("bert", "")


def test_packaged_minilm_loads_offline_and_matches_sentence_transformers():
    enc = T.load_text_encoder("minilm")
    texts = ["a person walks forward", "someone walks straight ahead", "a person claps their hands"]
    out = enc.encode(texts)
    assert out.shape == (3, 384) and enc.identity == "minilm-53aa51172d142c89"
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(3))
    sims = out @ out.T
    assert sims[0, 1] > sims[0, 2] + 0.1  # walking is closer to walking than to clapping
    st = pytest.importorskip("sentence_transformers")
    model = st.SentenceTransformer(str(T.minilm_folder()), device="cpu")
    reference = model.encode(texts, convert_to_tensor=True)
    torch.testing.assert_close(out, reference.float(), atol=1e-5, rtol=0)


@dataclass
class CountingEncoder:
    identity: str = "fake-0123"
    dim: int = 2
    calls: int = 0

    def encode(self, texts):
        self.calls += 1
        return torch.tensor([[len(t), t.count("a")] for t in texts], dtype=torch.float32)

    def describe(self) -> str:
        return "fake"


def test_each_caption_is_encoded_once_and_the_table_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERSYNC_CACHE", str(tmp_path))
    enc = CountingEncoder()
    rows, table = T.embed_captions(enc, ["walk", "run", "walk", "a jump"])
    assert rows == {"a jump": 0, "run": 1, "walk": 2} and table.tolist() == [[6, 1], [3, 0], [4, 1]]
    rows2, table2 = T.embed_captions(enc, ["run", "walk", "a jump"])
    assert enc.calls == 1 and rows2 == rows and torch.equal(table2, table)
    T.embed_captions(enc, ["run"])
    assert enc.calls == 2 and len(list((tmp_path / "motion_text").glob("fake-0123-*.pt"))) == 2
