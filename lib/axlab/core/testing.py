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
           "tiny_split", "tiny_image_processor", "tiny_image_split", "tiny_image_splits", "save_tiny_vision"]

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


def tiny_image_processor(image_size: int = 28, channels: int = 1):
    """A ViT image processor for tiny models: resize to ``image_size``, rescale, normalise (0.5, 0.5)."""
    from transformers import ViTImageProcessor
    return ViTImageProcessor(size={"height": image_size, "width": image_size}, image_mean=[0.5] * channels,
                             image_std=[0.5] * channels)


def tiny_image_split(n: int = 24, seed: int = 0, num_labels: int = 3, image_size: int = 28, channels: int = 1):
    """A small labelled :class:`~axlab.core.images.ImageSplit` of seeded uint8 images.

    Class c is a bright square in the c-th of ``num_labels`` horizontal positions on noise,
    so the label is learnable; names are ``"c0"``, ``"c1"``, ...
    """
    import numpy as np

    from axlab.core.images import ImageSplit
    rng = np.random.default_rng(seed)
    shape = (n, image_size, image_size) + ((3,) if channels == 3 else ())
    images = rng.integers(0, 80, size=shape, dtype=np.uint8)
    labels = rng.integers(0, num_labels, size=n).tolist()
    width = max(1, image_size // num_labels)
    for i, y in enumerate(labels):
        images[i, image_size // 3: 2 * image_size // 3, y * width:(y + 1) * width] = 255
    return ImageSplit(images, [int(y) for y in labels], [f"c{i}" for i in range(num_labels)])


def tiny_image_splits(n: int = 24, num_labels: int = 3, image_size: int = 28, channels: int = 1):
    """Train / validation / test :func:`tiny_image_split` s (seeds 0, 1, 2) as :class:`~axlab.core.images.ImageSplits`."""
    from axlab.core.images import ImageSplits
    parts = [tiny_image_split(n, seed, num_labels, image_size, channels) for seed in range(3)]
    return ImageSplits("tiny-images", parts[0].label_names, *parts, seed=0, file_hash="0" * 64,
                       source_file="(synthetic)")


def save_tiny_vision(folder: str | Path, arch: str = "vit", **kw) -> Path:
    """Write a tiny image classifier + image processor folder, as ``save_pretrained`` would.

    Its labels are ``"c0"``, ``"c1"``, ... (as :func:`tiny_image_split`).
    """
    folder = Path(folder)
    model = tiny_vision_model(arch, **kw)
    n = model.config.num_labels
    model.config.id2label = {i: f"c{i}" for i in range(n)}
    model.config.label2id = {f"c{i}": i for i in range(n)}
    model.save_pretrained(folder, safe_serialization=True)
    tiny_image_processor(model.config.image_size, model.config.num_channels).save_pretrained(folder)
    return folder
