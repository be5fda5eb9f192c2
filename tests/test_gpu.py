"""A model moved to a GPU is measured, pruned, fine-tuned and distilled there (skipped without CUDA).

The CPU tests below check the device plumbing that needs no GPU: batches follow the model,
and logits come back on the CPU, so the same code serves both.
"""
from types import SimpleNamespace

import pytest
import torch
from axlab.compress import prune
from axlab.compress.distill import distill
from axlab.core.measure import evaluate, forward, model_device, predict_logits, to_device
from axlab.core.testing import tiny_model, tiny_split
from axlab.core.train import train_classifier

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def test_to_device_and_model_device():
    m = tiny_model("bert", seed=0)
    assert model_device(m) == torch.device("cpu")
    assert model_device(torch.nn.ReLU()) == torch.device("cpu")          # no parameters: CPU
    b = {"input_ids": torch.ones(1, 3, dtype=torch.long), "note": "x"}
    assert to_device(b, torch.device("cpu")) is b                       # nothing to move: the same dict
    moved = to_device(b, torch.device("meta"))
    assert moved["input_ids"].device.type == "meta" and moved["note"] == "x" and b["input_ids"].device.type == "cpu"


class _Recorder(torch.nn.Module):
    """Weights on the meta device; records where its inputs arrive."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.empty(2, device="meta"))

    def forward(self, input_ids, attention_mask):
        self.seen = (input_ids.device, attention_mask.device)
        return SimpleNamespace(logits=self.w.expand(len(input_ids), 2))


def test_forward_moves_the_batch_to_the_model(batch):
    m = _Recorder()
    out = forward(m, batch)
    assert m.seen == (torch.device("meta"), torch.device("meta"))
    assert out.logits.device.type == "meta" and batch["input_ids"].device.type == "cpu"     # input batch untouched


@cuda
@pytest.mark.parametrize("arch", ["bert", "distilbert"])
def test_cuda_evaluate_matches_cpu(tokenizer, arch):
    m = tiny_model(arch, seed=1)
    data = tiny_split(40, seed=3)
    cpu = evaluate(m, tokenizer, data)
    gpu_model = m.to("cuda")
    gpu = evaluate(gpu_model, tokenizer, data)
    assert gpu["accuracy"] == cpu["accuracy"]
    assert abs(gpu["loss"] - cpu["loss"]) < 1e-4
    lg = predict_logits(gpu_model, tokenizer, data.texts[:5])
    assert lg.device.type == "cpu"


@cuda
def test_cuda_prune_matches_cpu(tokenizer, batch):
    m = tiny_model("bert", seed=2).eval()
    neurons = {0: [0, 3, 5], 1: [1]}
    heads = {0: [1], 1: [0, 2]}
    cpu = prune.prune_heads(prune.prune_ffn(m, neurons), heads)
    gpu = prune.prune_heads(prune.prune_ffn(m.to("cuda"), neurons), heads)
    assert model_device(gpu).type == "cuda"
    with torch.no_grad():
        torch.testing.assert_close(forward(gpu, batch).logits.cpu(), forward(cpu, batch).logits, atol=1e-4, rtol=0)


@cuda
@pytest.mark.parametrize("hidden_weight", [0.0, 1.0])
def test_cuda_distill_and_train_stay_on_the_gpu(tokenizer, batch, hidden_weight):
    teacher = tiny_model("bert", seed=0)
    with torch.no_grad():
        teacher.classifier.weight *= 30
    student = prune.prune_heads(teacher, {0: [0, 1]})
    with torch.no_grad():
        student.classifier.weight.copy_(torch.randn_like(student.classifier.weight) * 3)
    gap = lambda s: (forward(s, batch).logits.cpu() - forward(teacher, batch).logits.cpu()).pow(2).mean()  # noqa: E731
    s_gpu, t_gpu = student.to("cuda"), teacher.to("cuda")
    before = gap(s_gpu)
    out = distill(s_gpu, t_gpu, tokenizer, tiny_split(64, seed=7), steps=12, batch_size=16, alpha=1.0, lr=1e-3,
                  hidden_weight=hidden_weight, augment=1)
    assert model_device(out).type == "cuda"
    assert gap(out) < before
    stats = train_classifier(out, tokenizer, tiny_split(32, seed=8), epochs=1, batch_size=16)
    assert stats["steps"] == 2 and model_device(out).type == "cuda"


def _cpu_only_calls(tokenizer):
    from axlab.analysis.attributions import token_attributions
    from axlab.analysis.importance import head_ablation, head_importance
    from axlab.compress.axformer import search
    from axlab.compress.gpfq import gpfq
    split = tiny_split(8, seed=1)
    return {"Head importance (gradient)": lambda m: head_importance(m, tokenizer, split, method="gradient"),
            "Head ablation": lambda m: head_ablation(m, tokenizer, split),
            "The AxFormer search": lambda m: search(m, tokenizer, None),
            "GPFQ / GPTQ quantization": lambda m: gpfq(m, tokenizer, split.texts, 4),
            "Vocabulary pruning": lambda m: prune.prune_vocab(m, tokenizer, split.texts),
            "FFN importance": lambda m: prune.ffn_importance(m, "magnitude"),
            "Token attribution": lambda m: token_attributions(m, tokenizer, "a fine film")}


def test_cpu_only_paths_refuse_a_model_elsewhere_with_a_hint(tokenizer):
    from axlab.core.errors import AxlabError
    m = tiny_model("bert", seed=0).to("meta")
    for what, call in _cpu_only_calls(tokenizer).items():
        with pytest.raises(AxlabError, match="runs on the CPU") as e:
            call(m)
        assert str(e.value).startswith(what) and "model.cpu()" in e.value.hint, what

