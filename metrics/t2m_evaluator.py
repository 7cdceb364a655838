"""The T2M evaluator (Guo et al., CVPR 2022): contrastive text and motion encoders into one 512-d space.

Ported from the `text_mot_match` checkpoint structure of EricGuo5513/text-to-motion (networks/modules.py,
networks/evaluator_wrapper.py), with the attribute names kept so `t2m/text_mot_match/model/finest.tar` loads
as is (its keys `text_encoder`, `movement_encoder`, `motion_encoder`):
- text: per token GloVe (300) + Linear(POS one-hot 15 → 300), Linear → 512, BiGRU 512, the two final
  states → Linear 1024→512, LayerNorm, LeakyReLU 0.2, Linear → 512;
- motion: HumanML3D features without the 4 foot contacts (263 − 4 = 259), two Conv1d(k 4, s 2, p 1) with
  LeakyReLU 0.2 (259 → 512 → 512, one step per 4 frames), Linear 512; BiGRU hidden 1024 over the first
  ⌊length / 4⌋ steps → Linear 2048→1024, LayerNorm, LeakyReLU, Linear → 512.
Inputs follow the T2M test loader: motions z-normalised by the evaluator's mean/std (`meta/mean.npy`,
`std.npy`, MDM's `t2m_mean.npy`/`t2m_std.npy`), captions as HumanML3D `word/POS` tokens, at most 20, wrapped
in `sos`/`eos` and padded with `unk` to 22. Sequences are packed unsorted (`enforce_sorted=False`): the
embeddings come back in input order, where T2M's wrapper returns them sorted by motion length.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from layersync.core.errors import UserFileNotFoundError, UserKeyError, UserValueError
from layersync.core.weights import WeightFile, resolve

WORD_DIM = 300  # GloVe
MAX_TEXT_TOKENS = 20  # before sos/eos
UNIT_LENGTH = 4  # frames per movement step (two stride-2 convs)
HUMANML3D_DIM = 263
CONTACT_DIM = 4  # the last 4 features (foot contacts) are not encoded
EMBEDDING_DIM = 512

# Part-of-speech classes; words of the five "VIP" lists override their spaCy tag (utils/word_vectorizer.py).
POS_CLASSES = (
    "VERB", "NOUN", "DET", "ADP", "NUM", "AUX", "PRON", "ADJ", "ADV",
    "Loc_VIP", "Body_VIP", "Obj_VIP", "Act_VIP", "Desc_VIP", "OTHER",
)  # fmt: skip
VIP_WORDS = {
    "Loc_VIP": ("left", "right", "clockwise", "counterclockwise", "anticlockwise", "forward", "back",
                "backward", "up", "down", "straight", "curve"),
    "Body_VIP": ("arm", "chin", "foot", "feet", "face", "hand", "mouth", "leg", "waist", "eye", "knee",
                 "shoulder", "thigh"),
    "Obj_VIP": ("stair", "dumbbell", "chair", "window", "floor", "car", "ball", "handrail", "baseball",
                "basketball"),
    "Act_VIP": ("walk", "run", "swing", "pick", "bring", "kick", "put", "squat", "throw", "hop", "dance",
                "jump", "turn", "stumble", "stop", "sit", "lift", "lower", "raise", "wash", "stand", "kneel",
                "stroll", "rub", "bend", "balance", "flap", "jog", "shuffle", "lean", "rotate", "spin",
                "spread", "climb"),
    "Desc_VIP": ("slowly", "carefully", "fast", "careful", "slow", "quickly", "happy", "angry", "sad",
                 "happily", "angrily", "sadly"),
}  # fmt: skip

_T2M_SOURCE = "the T2M release (EricGuo5513/text-to-motion README: checkpoints t2m.zip; its glove/ folder)"
T2M_EVALUATOR_WEIGHTS = WeightFile(
    filename="finest.tar",
    sha256=None,  # no published checksum; pass the path of t2m/text_mot_match/model/finest.tar
    source=_T2M_SOURCE,
    description="T2M text-motion matching evaluator (t2m/text_mot_match/model/finest.tar)",
)
GLOVE_VECTORS = WeightFile("our_vab_data.npy", None, _T2M_SOURCE, "T2M GloVe vectors (vocabulary subset)")
GLOVE_WORDS = WeightFile(
    "our_vab_words.pkl",
    "fac88da1be6f00d36b72b88c9745c8ac35a94a7bd6ccf1fa3bab380faf8c2e0d",
    _T2M_SOURCE,
    "T2M GloVe vocabulary word list",
)
GLOVE_INDEX = WeightFile(
    "our_vab_idx.pkl",
    "d85dce83d2c27a92bb94bb51dc1f55a04fcaa328c359d23eccf648e296c16493",
    _T2M_SOURCE,
    "T2M GloVe word → row index",
)


def pos_one_hot(pos: str) -> np.ndarray:
    """(15,) one-hot of a POS class; unknown tags count as OTHER."""
    vec = np.zeros(len(POS_CLASSES))
    vec[POS_CLASSES.index(pos) if pos in POS_CLASSES else POS_CLASSES.index("OTHER")] = 1.0
    return vec


class WordVectorizer:
    """`word/POS` token → (GloVe vector, POS one-hot); VIP words take their VIP class, unknown words `unk`."""

    def __init__(self, vectors: np.ndarray, word_to_row: dict[str, int]):
        if "unk" not in word_to_row:
            raise UserKeyError("the vocabulary lacks the `unk` token every out-of-vocabulary word maps to")
        self.vectors = np.asarray(vectors)
        self.word_to_row = word_to_row
        self._vip = {word: cls for cls, words in VIP_WORDS.items() for word in words}

    @classmethod
    def from_files(cls, folder: str | os.PathLike | None = None) -> WordVectorizer:
        """Read our_vab_data.npy, our_vab_words.pkl, our_vab_idx.pkl from `folder` or `$LAYERSYNC_WEIGHTS`."""
        vectors = np.load(resolve(GLOVE_VECTORS, folder))
        with open(resolve(GLOVE_WORDS, folder), "rb") as f:
            words = pickle.load(f)  # sha256-checked list of str
        with open(resolve(GLOVE_INDEX, folder), "rb") as f:
            index = pickle.load(f)  # sha256-checked dict str → int
        return cls(vectors, {w: index[w] for w in words})

    def __len__(self) -> int:
        return len(self.word_to_row)

    def __getitem__(self, token: str) -> tuple[np.ndarray, np.ndarray]:
        word, sep, pos = token.rpartition("/")
        if not sep:
            raise UserValueError(f"expected a `word/POS` token, got {token!r}")
        if word not in self.word_to_row:
            return self.vectors[self.word_to_row["unk"]], pos_one_hot("OTHER")
        return self.vectors[self.word_to_row[word]], pos_one_hot(self._vip.get(word, pos))

    def encode(self, tokens: Sequence[str]) -> tuple[np.ndarray, np.ndarray, int]:
        """(22, 300) word vectors, (22, 15) POS one-hots and the length with sos/eos, as T2M's test loader."""
        tokens = ["sos/OTHER", *tokens[:MAX_TEXT_TOKENS], "eos/OTHER"]
        length = len(tokens)
        tokens += ["unk/OTHER"] * (MAX_TEXT_TOKENS + 2 - length)
        words, pos = zip(*(self[t] for t in tokens))
        return np.stack(words), np.stack(pos), length


def _last_states(gru: nn.GRU, hidden: nn.Parameter, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Final forward and backward states of a BiGRU started from the learned `hidden`: (B, 2H)."""
    packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
    _, last = gru(packed, hidden.repeat(1, x.shape[0], 1).contiguous())  # (2, B, H)
    return torch.cat([last[0], last[1]], dim=-1)


def _head(hidden_size: int, output_size: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(hidden_size * 2, hidden_size),
        nn.LayerNorm(hidden_size),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Linear(hidden_size, output_size),
    )


class TextEncoderBiGRUCo(nn.Module):
    """(B, L, 300) word vectors + (B, L, 15) POS one-hots + lengths → (B, 512) text embedding."""

    def __init__(self, word_size: int = WORD_DIM, pos_size: int = len(POS_CLASSES), hidden_size: int = 512,
                 output_size: int = EMBEDDING_DIM):  # fmt: skip
        super().__init__()
        self.pos_emb = nn.Linear(pos_size, word_size)
        self.input_emb = nn.Linear(word_size, hidden_size)
        self.gru = nn.GRU(hidden_size, hidden_size, batch_first=True, bidirectional=True)
        self.output_net = _head(hidden_size, output_size)
        self.hidden = nn.Parameter(torch.randn(2, 1, hidden_size))  # learned initial state

    def forward(
        self, word_embs: torch.Tensor, pos_onehot: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        x = self.input_emb(word_embs + self.pos_emb(pos_onehot))  # (B, L, H)
        return self.output_net(_last_states(self.gru, self.hidden, x, lengths))  # (B, 512)


class MovementConvEncoder(nn.Module):
    """(B, T, 259) motion features → (B, T/4, 512) movement codes (two stride-2 convolutions)."""

    def __init__(self, input_size: int = HUMANML3D_DIM - CONTACT_DIM, hidden_size: int = 512,
                 output_size: int = 512):  # fmt: skip
        super().__init__()
        # Dropout layers keep the checkpoint's Sequential indices (main.0, main.3); identity in eval mode.
        self.main = nn.Sequential(
            nn.Conv1d(input_size, hidden_size, 4, 2, 1),
            nn.Dropout(0.2),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv1d(hidden_size, output_size, 4, 2, 1),
            nn.Dropout(0.2),
            nn.LeakyReLU(0.2, inplace=True),
        )
        self.out_net = nn.Linear(output_size, output_size)

    def forward(self, motions: torch.Tensor) -> torch.Tensor:
        return self.out_net(self.main(motions.transpose(1, 2)).transpose(1, 2))  # (B, T/4, 512)


class MotionEncoderBiGRUCo(nn.Module):
    """(B, S, 512) movement codes + step counts → (B, 512) motion embedding."""

    def __init__(self, input_size: int = 512, hidden_size: int = 1024, output_size: int = EMBEDDING_DIM):
        super().__init__()
        self.input_emb = nn.Linear(input_size, hidden_size)
        self.gru = nn.GRU(hidden_size, hidden_size, batch_first=True, bidirectional=True)
        self.output_net = _head(hidden_size, output_size)
        self.hidden = nn.Parameter(torch.randn(2, 1, hidden_size))

    def forward(self, movements: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        return self.output_net(_last_states(self.gru, self.hidden, self.input_emb(movements), steps))


class T2MEvaluator(nn.Module):
    """The three encoders of `text_mot_match`; `encode_text` and `encode_motion` give (B, 512) embeddings."""

    def __init__(self, motion_dim: int = HUMANML3D_DIM, text_hidden: int = 512, motion_hidden: int = 1024,
                 movement_dim: int = 512):  # fmt: skip
        super().__init__()
        self.motion_dim = motion_dim
        self.text_encoder = TextEncoderBiGRUCo(hidden_size=text_hidden)
        self.movement_encoder = MovementConvEncoder(motion_dim - CONTACT_DIM, movement_dim, movement_dim)
        self.motion_encoder = MotionEncoderBiGRUCo(movement_dim, motion_hidden)

    @torch.no_grad()
    def encode_text(
        self, word_embs: torch.Tensor, pos_onehot: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        """(B, 22, 300), (B, 22, 15), (B,) token counts with sos/eos → (B, 512)."""
        return self.text_encoder(word_embs.float(), pos_onehot.float(), lengths)

    @torch.no_grad()
    def encode_motion(self, motions: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, T, 263) normalised HumanML3D features, (B,) frame counts → (B, 512).

        Pad past each length with zeros as T2M's loader does: the last of the ⌊length/4⌋ steps sees up to
        3 frames beyond the length through the convolutions' receptive field.
        """
        if motions.ndim != 3 or motions.shape[-1] != self.motion_dim:
            raise UserValueError(f"expected (B, T, {self.motion_dim}) motions, got {tuple(motions.shape)}")
        lengths = torch.as_tensor(lengths)
        steps = lengths // UNIT_LENGTH
        if (steps < 1).any():
            raise UserValueError(f"every motion needs at least {UNIT_LENGTH} frames, got {lengths.tolist()}")
        movements = self.movement_encoder(motions[..., : -CONTACT_DIM].float())  # (B, T/4, 512)
        return self.motion_encoder(movements, steps)

    def checkpoint(self) -> dict[str, dict[str, torch.Tensor]]:
        """State dicts in the layout of `finest.tar` (plus nothing else)."""
        return {name: getattr(self, name).state_dict()
                for name in ("text_encoder", "movement_encoder", "motion_encoder")}  # fmt: skip


def load_t2m_evaluator(
    path: str | os.PathLike | None = None, device: torch.device | str = "cpu"
) -> T2MEvaluator:
    """The evaluator from `finest.tar` (file, or a folder holding it, or `$LAYERSYNC_WEIGHTS`), eval mode."""
    file = resolve(T2M_EVALUATOR_WEIGHTS, path)
    checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    missing = [k for k in ("text_encoder", "movement_encoder", "motion_encoder") if k not in checkpoint]
    if missing:
        raise UserKeyError(f"{file} lacks {missing}; expected T2M's text_mot_match checkpoint (finest.tar)")
    model = T2MEvaluator()
    for name in ("text_encoder", "movement_encoder", "motion_encoder"):
        getattr(model, name).load_state_dict(checkpoint[name])
    return model.to(device).eval()


def load_motion_stats(folder: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """The evaluator's (263,) mean and std from `mean.npy` and `std.npy` in `folder` (T2M's meta/)."""
    folder = Path(folder)
    stats = []
    for name in ("mean.npy", "std.npy"):
        if not (folder / name).is_file():
            raise UserFileNotFoundError(f"{folder / name} not found: T2M keeps it in checkpoints/t2m/*/meta/")
        stats.append(np.load(folder / name))
    return stats[0], stats[1]
