"""Tiny random models of each supported architecture, for tests and examples (seconds).

They use the packaged MiniLM tokenizer (a BERT WordPiece vocabulary) so no download is
needed; pad id 0 for every architecture so that tokenizer's padding works.
"""

from __future__ import annotations

from pathlib import Path

import torch

from axlab.core.attention import use_axlab_attention
from axlab.core.data import Split

__all__ = ["ARCHS", "VISION_ARCHS", "tiny_model", "tiny_vision_model", "tiny_pixels", "tiny_tokenizer", "save_tiny",
           "tiny_split"]

ARCHS = ("bert", "roberta", "distilbert", "electra")
VISION_ARCHS = ("vit", "deit", "dinov2")
_VISION_CLASSES = {"vit": "ViTForImageClassification", "deit": "DeiTForImageClassification",
                   "dinov2": "Dinov2ForImageClassification"}


def tiny_tokenizer():
    from transformers import AutoTokenizer

    from axlab.core.train import encoder_dir
    return AutoTokenizer.from_pretrained(encoder_dir())


def tiny_model(arch: str = "bert", num_labels: int = 2, seed: int = 0, hidden: int = 64, layers: int = 2,
               heads: int = 4, intermediate: int = 128, vocab_size: int = 30522):
    """A randomly initialised ``*ForSequenceClassification`` routed through axlab attention."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    torch.manual_seed(seed)
    if arch == "distilbert":
        cfg = AutoConfig.for_model("distilbert", vocab_size=vocab_size, dim=hidden, n_layers=layers, n_heads=heads,
                                   hidden_dim=intermediate, max_position_embeddings=160, pad_token_id=0,
                                   num_labels=num_labels)
    else:
        extra = {"embedding_size": hidden} if arch == "electra" else {}
        cfg = AutoConfig.for_model(arch, vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                                   num_attention_heads=heads, intermediate_size=intermediate,
                                   max_position_embeddings=160, pad_token_id=0, type_vocab_size=2,
                                   num_labels=num_labels, **extra)
    cfg._attn_implementation = "eager"
    model = AutoModelForSequenceClassification.from_config(cfg, attn_implementation="eager")
    model.config.architectures = [type(model).__name__]
    model.eval()
    return use_axlab_attention(model)


def tiny_vision_model(arch: str = "vit", num_labels: int = 3, seed: int = 0, hidden: int = 32, layers: int = 2,
                      heads: int = 4, intermediate: int = 64, image_size: int = 28, patch_size: int = 7,
                      channels: int = 1):
    """A randomly initialised ``*ForImageClassification`` (ViT, DeiT, DINOv2) routed through axlab attention."""
    from transformers import AutoConfig, AutoModelForImageClassification

    torch.manual_seed(seed)
    cfg = AutoConfig.for_model(arch, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                               intermediate_size=intermediate, image_size=image_size, patch_size=patch_size,
                               num_channels=channels, num_labels=num_labels)
    if arch == "dinov2":
        cfg.mlp_ratio = max(1, intermediate // hidden)
        cfg.layerscale_value = 0.5          # not 1e-5: let the tests see every layer's contribution
    cfg.architectures = [_VISION_CLASSES[arch]]          # DeiT's auto mapping has two classes
    cfg._attn_implementation = "eager"
    model = AutoModelForImageClassification.from_config(cfg, attn_implementation="eager")
    model.config.architectures = [type(model).__name__]
    model.eval()
    return use_axlab_attention(model)


def tiny_pixels(n: int = 4, seed: int = 0, image_size: int = 28, channels: int = 1) -> torch.Tensor:
    """Random images as ``pixel_values`` (n, channels, image_size, image_size)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, channels, image_size, image_size, generator=g)


def save_tiny(folder: str | Path, arch: str = "bert", **kw) -> Path:
    """Write a tiny model + tokenizer folder, as ``save_pretrained`` would."""
    folder = Path(folder)
    model = tiny_model(arch, **kw)
    model.save_pretrained(folder, safe_serialization=True)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def tiny_split(n: int = 32, seed: int = 0, num_labels: int = 2) -> Split:
    """A small labelled split of synthetic sentences with varied lengths."""
    g = torch.Generator().manual_seed(seed)
    words = ["good", "bad", "film", "movie", "great", "awful", "plot", "actor", "boring", "fun", "the", "a", "was",
             "very", "not", "really", "story", "scene", "."]
    texts, labels = [], []
    for _ in range(n):
        k = int(torch.randint(3, 20, (1,), generator=g))
        idx = torch.randint(0, len(words), (k,), generator=g).tolist()
        texts.append(" ".join(words[i] for i in idx))
        labels.append(int(torch.randint(0, num_labels, (1,), generator=g)))
    return Split(texts, labels)
