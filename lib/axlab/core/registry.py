"""Where each supported architecture keeps its parts.

This is the one module that knows attribute names inside transformers models. Every
other module asks it for "the attention of layer i" or "the FFN of layer i" and works on
plain ``nn.Linear`` objects.

Supported text encoders: BERT (MiniLM is a BERT), RoBERTa, ELECTRA, DistilBERT.
Supported vision transformers: ViT, DeiT, DINOv2 (``*ForImageClassification``; their
attention modules hold q/k/v/o together, like DistilBERT's). ``spec.modality`` says which.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from axlab.core.errors import UnsupportedModelError

__all__ = ["ArchSpec", "AttentionParts", "FFNParts", "SUPPORTED", "TEXT_TYPES", "IMAGE_TYPES", "spec_for", "modality",
           "layers",
           "attention_module", "attention_parts", "ffn_parts", "word_embeddings", "base_model", "classifier_modules", "head_logits"]


@dataclass(frozen=True)
class ArchSpec:
    model_type: str
    base: str            # attribute of the *ForSequenceClassification holding the encoder
    layers: str          # dotted path from the base model to the ModuleList of layers
    attn_self: str       # dotted path from a layer to the module calling the attention interface
    q: str
    k: str
    v: str
    o: str               # dotted path from a layer to the attention output projection
    ffn_in: str          # dotted path from a layer to the FFN up-projection
    ffn_out: str         # dotted path from a layer to the FFN down-projection
    attn_block: str      # dotted path from a layer to the whole attention block
    n_heads_attr: str    # config attribute with the number of heads
    modality: str = "text"   # "text" (input_ids) or "image" (pixel_values)


_BERT_LIKE = dict(layers="encoder.layer", attn_self="attention.self", q="query", k="key", v="value",
                  o="attention.output.dense", ffn_in="intermediate.dense", ffn_out="output.dense",
                  attn_block="attention", n_heads_attr="num_attention_heads")

SUPPORTED: dict[str, ArchSpec] = {
    "bert": ArchSpec("bert", base="bert", **_BERT_LIKE),
    "roberta": ArchSpec("roberta", base="roberta", **_BERT_LIKE),
    "electra": ArchSpec("electra", base="electra", **_BERT_LIKE),
    "distilbert": ArchSpec("distilbert", base="distilbert", layers="transformer.layer", attn_self="attention",
                           q="q_lin", k="k_lin", v="v_lin", o="attention.out_lin", ffn_in="ffn.lin1",
                           ffn_out="ffn.lin2", attn_block="attention", n_heads_attr="n_heads"),
}
# transformers 5 vision transformers: layer.attention.{q,k,v,o}_proj, layer.mlp.fc1/fc2
_VIT_LIKE = dict(attn_self="attention", q="q_proj", k="k_proj", v="v_proj", o="attention.o_proj",
                 ffn_in="mlp.fc1", ffn_out="mlp.fc2", attn_block="attention", n_heads_attr="num_attention_heads",
                 modality="image")
SUPPORTED.update({
    "vit": ArchSpec("vit", base="vit", layers="layers", **_VIT_LIKE),
    "deit": ArchSpec("deit", base="deit", layers="layers", **_VIT_LIKE),
    "dinov2": ArchSpec("dinov2", base="dinov2", layers="encoder.layer", **_VIT_LIKE),
})
TEXT_TYPES = tuple(t for t, s in SUPPORTED.items() if s.modality == "text")
IMAGE_TYPES = tuple(t for t, s in SUPPORTED.items() if s.modality == "image")


def spec_for(model_or_type) -> ArchSpec:
    """The ArchSpec of a model (or a ``model_type`` string); a clear error if unsupported."""
    model_type = model_or_type if isinstance(model_or_type, str) else model_or_type.config.model_type
    try:
        return SUPPORTED[model_type]
    except KeyError:
        raise UnsupportedModelError(
            f"Architecture '{model_type}' is not supported by axlab.",
            f"Use a sequence-classification model of one of: {', '.join(sorted(SUPPORTED))} "
            "(MiniLM checkpoints are BERT models).",
        ) from None


def _get(module: nn.Module, path: str) -> nn.Module:
    for part in path.split("."):
        module = getattr(module, part)
    return module


def base_model(model: nn.Module) -> nn.Module:
    return getattr(model, spec_for(model).base)


def layers(model: nn.Module) -> nn.ModuleList:
    """The encoder's list of transformer layers."""
    return _get(base_model(model), spec_for(model).layers)


@dataclass
class AttentionParts:
    module: nn.Module    # the module that calls the attention interface
    q: nn.Linear
    k: nn.Linear
    v: nn.Linear
    o: nn.Linear
    head_dim: int

    @property
    def n_heads(self) -> int:
        return self.q.out_features // self.head_dim


@dataclass
class FFNParts:
    up: nn.Linear        # hidden -> intermediate
    down: nn.Linear      # intermediate -> hidden


def attention_module(model: nn.Module, layer: int) -> nn.Module:
    """The module that calls the attention interface (or an EmptyAttention once all heads are gone)."""
    return _get(layers(model)[layer], spec_for(model).attn_self)


def attention_parts(model: nn.Module, layer: int) -> AttentionParts:
    """q/k/v/o of a layer. Not for a layer whose heads were all removed (see attention_module)."""
    spec = spec_for(model)
    lay = layers(model)[layer]
    mod = _get(lay, spec.attn_self)
    return AttentionParts(module=mod, q=_get(mod, spec.q), k=_get(mod, spec.k), v=_get(mod, spec.v),
                          o=_get(lay, spec.o), head_dim=head_dim(model))


def ffn_parts(model: nn.Module, layer: int) -> FFNParts:
    spec = spec_for(model)
    if getattr(model.config, "use_swiglu_ffn", False):
        raise UnsupportedModelError("This DINOv2 model uses a SwiGLU FFN, whose neurons axlab cannot prune yet.",
                                    "Use a DINOv2 model with the plain MLP (use_swiglu_ffn=False), or prune heads "
                                    "and layers only.")
    lay = layers(model)[layer]
    return FFNParts(up=_get(lay, spec.ffn_in), down=_get(lay, spec.ffn_out))


def head_dim(model: nn.Module) -> int:
    cfg = model.config
    hidden = getattr(cfg, "hidden_size", None) or cfg.dim
    return hidden // getattr(cfg, spec_for(model).n_heads_attr)


def n_heads_config(model: nn.Module) -> int:
    return getattr(model.config, spec_for(model).n_heads_attr)


def modality(model_or_type) -> str:
    """``"text"`` or ``"image"``."""
    return spec_for(model_or_type).modality


def word_embeddings(model: nn.Module) -> nn.Embedding:
    if modality(model) != "text":
        raise UnsupportedModelError(f"A {model.config.model_type} model reads pixels: it has no word embeddings.",
                                    "Vocabulary pruning and embedding quantization apply to text models only.")
    return base_model(model).embeddings.word_embeddings


def classifier_modules(model: nn.Module) -> list[nn.Module]:
    """Modules after the encoder (pooler/pre-classifier/classifier)."""
    out = []
    for name in ("pooler", "layernorm"):
        m = getattr(base_model(model), name, None)
        if m is not None:
            out.append(m)
    for name in ("pre_classifier", "classifier"):
        m = getattr(model, name, None)
        if m is not None:
            out.append(m)
    return out


# --------------------------------------------------------------------------- the head path
# How each architecture turns the last block's output into logits, so the same path can read
# ANY block's output (early exits, self-distillation). Each follows its HF class's forward.

def _cls_norm_head(model: nn.Module, hidden):
    """ViT / DeiT: final layernorm, then the classifier on [CLS] (DeiT-with-teacher: mean of its two heads)."""
    h = base_model(model).layernorm(hidden)
    if hasattr(model, "cls_classifier"):          # DeiTForImageClassificationWithTeacher
        return (model.cls_classifier(h[:, 0, :]) + model.distillation_classifier(h[:, 1, :])) / 2
    return model.classifier(h[:, 0, :])


def _dinov2_head(model: nn.Module, hidden):
    """DINOv2: final layernorm, then the classifier on concat([CLS], mean of the patch tokens)."""
    import torch
    h = base_model(model).layernorm(hidden)
    return model.classifier(torch.cat([h[:, 0], h[:, 1:].mean(dim=1)], dim=1))


def _bert_head(model: nn.Module, hidden):
    """BERT: pooler (dense + tanh on [CLS]), dropout, classifier."""
    return model.classifier(model.dropout(base_model(model).pooler(hidden)))


def _sequence_head(model: nn.Module, hidden):
    """RoBERTa / ELECTRA: the classification head reads the whole sequence (it takes [CLS] itself)."""
    return model.classifier(hidden)


def _distilbert_head(model: nn.Module, hidden):
    """DistilBERT: [CLS] -> pre_classifier -> ReLU -> dropout -> classifier."""
    h = nn.functional.relu(model.pre_classifier(hidden[:, 0]))
    return model.classifier(model.dropout(h))


_HEADS = {"vit": _cls_norm_head, "deit": _cls_norm_head, "dinov2": _dinov2_head, "bert": _bert_head,
          "roberta": _sequence_head, "electra": _sequence_head, "distilbert": _distilbert_head}


def head_logits(model: nn.Module, hidden_states):
    """Logits from one block's output ``hidden_states`` (B, T, D) through the model's own head.

    The head path is everything the model does after its last block: the final norm (vision
    transformers), the pooler / pre-classifier and the classifier, exactly as the HF class
    computes its logits. Applied to the last block's output it gives the model's logits;
    applied to an earlier block's output it gives that block's *early exit* (no new parameters).
    """
    return _HEADS[spec_for(model).model_type](model, hidden_states)
