"""Export folders: round trip (also in a fresh process), plain transformers loading, atomicity, overwrite."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from axlab.compress import prune, quantize
from axlab.core.attention import set_topk
from axlab.core.errors import ExportError, ModelLoadError
from axlab.core.folder import VARIANT_FILE
from axlab.core.loading import load_variant
from axlab.core.measure import predict_logits
from axlab.core.testing import tiny_model, tiny_split, tiny_tokenizer
from axlab.deploy.export import export_variant

TEXTS = ["", "fun", "the plot was very boring and the actor was not good .", "great " * 60,
         "a really awful film , not fun", "good story"]


def pruned_variant(arch, vocab_texts=None):
    """Uneven heads, a layer with no heads, narrower FFN, hard attention; vocabulary pruned if texts given."""
    m = tiny_model(arch)
    m = prune.prune_heads(m, {0: [1, 2], 1: [0, 1, 2, 3]})
    m = prune.prune_ffn(m, {0: [1, 5, 9, 77]})
    if vocab_texts:
        m, _ = prune.prune_vocab(m, tiny_tokenizer(), vocab_texts)
    set_topk(m, {0: 3})
    return m


def state_copy(model):
    return {k: v.clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}


@pytest.mark.parametrize("arch,quant", [("bert", None), ("roberta", "rtn4"), ("distilbert", "int8"),
                                        ("electra", "int8"), ("distilbert", None)])
def test_round_trip_in_process(arch, tokenizer, tmp_path, quant):
    model = pruned_variant(arch)
    if quant == "rtn4":
        model = quantize.rtn(model, 4, group_size=16)
    elif quant == "int8":
        model = quantize.int8_dynamic(model)
    before = state_copy(model)
    model.train()
    folder = export_variant(model, tokenizer, tmp_path / "v", recipe=[], measurements={"accuracy": 0.5},
                            base="tiny", labels=["neg", "pos"])
    assert all(m.training for m in model.modules())      # export does not touch the model
    for k, v in before.items():
        torch.testing.assert_close(model.state_dict()[k], v, atol=0, rtol=0)
    model.eval()
    bundle = load_variant(folder)
    torch.testing.assert_close(predict_logits(bundle.model, tokenizer, TEXTS), predict_logits(model, tokenizer, TEXTS),
                               atol=1e-6, rtol=0)
    assert bundle.labels == ["neg", "pos"]
    assert bundle.info["plain"] is False
    assert (bundle.info["quant_layout"] is not None) == (quant is not None)
    assert bundle.info["measurements"] == {"accuracy": 0.5}


_CHILD = textwrap.dedent("""
    import json, sys, torch
    import axlab
    from axlab.core.measure import predict_logits
    out = {}
    for folder in sys.argv[2:]:
        b = axlab.load_model(folder)          # dispatches to axlab.core.loading.load_variant
        out[folder] = predict_logits(b.model, b.tokenizer, json.loads(sys.argv[1])).tolist()
    print(json.dumps(out))
""")


def logits_in_fresh_process(folders, texts):
    res = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(texts), *map(str, folders)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    return {f: torch.tensor(out[str(f)]) for f in folders}


def test_round_trip_fresh_process_pruned_and_quantized(tokenizer, tmp_path):
    split = tiny_split(40)
    base = pruned_variant("bert", vocab_texts=split.texts)
    base = prune.drop_layers(base, [1])
    variants = {"rtn4": quantize.rtn(base, 4), "int8": quantize.int8_dynamic(base),
                "rtn4_emb": quantize.rtn(pruned_variant("distilbert"), 4, embeddings=True)}
    folders = {name: export_variant(m, tokenizer, tmp_path / name, base="tiny") for name, m in variants.items()}
    texts = split.texts[:8] + TEXTS
    fresh = logits_in_fresh_process(list(folders.values()), texts)
    for name, m in variants.items():
        torch.testing.assert_close(fresh[folders[name]], predict_logits(m, tokenizer, texts), atol=1e-5, rtol=0)


def test_plain_model_loads_with_transformers(arch, tokenizer, tmp_path):
    from transformers import AutoModelForSequenceClassification
    model = tiny_model(arch, seed=3)
    folder = export_variant(model, tokenizer, tmp_path / "plain", base="tiny", labels=["no", "yes"])
    assert json.loads((folder / VARIANT_FILE).read_text())["plain"] is True
    hf = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    assert hf.config.id2label == {0: "no", 1: "yes"}
    torch.testing.assert_close(predict_logits(hf, tokenizer, TEXTS), predict_logits(model, tokenizer, TEXTS),
                               atol=1e-5, rtol=0)


def test_overwrite_is_refused_then_explicit(tokenizer, tmp_path):
    a, b = tiny_model("bert", seed=1), tiny_model("bert", seed=2)
    folder = export_variant(a, tokenizer, tmp_path / "v", base="a")
    (folder / "stale.txt").write_text("from the old export")
    with pytest.raises(ExportError, match="already exists"):
        export_variant(b, tokenizer, folder, base="b")
    assert load_variant(folder).info["base"] == "a"                 # untouched
    export_variant(b, tokenizer, folder, base="b", overwrite=True)
    assert load_variant(folder).info["base"] == "b"
    assert not (folder / "stale.txt").exists()                      # replaced, not merged
    assert [p.name for p in tmp_path.iterdir()] == ["v"]             # no temporary folders left


@pytest.mark.parametrize("existing", [False, True])
def test_crash_mid_export_leaves_no_complete_looking_folder(tokenizer, tmp_path, monkeypatch, existing):
    import axlab.core.folder as ex
    old = tiny_model("bert", seed=1)
    target = tmp_path / "v"
    if existing:
        export_variant(old, tokenizer, target, base="old")

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(ex, "_readme", boom)            # after the weights, before the sidecar
    with pytest.raises(OSError, match="disk full"):
        export_variant(tiny_model("bert", seed=2), tokenizer, target, base="new", overwrite=True)
    if existing:
        assert load_variant(target).info["base"] == "old"
    else:
        assert not target.exists()
    assert [p.name for p in tmp_path.iterdir()] == (["v"] if existing else [])


def test_leftovers_of_a_killed_export_are_cleaned_by_the_next_export(tokenizer, tmp_path):
    import shutil
    import subprocess
    import sys

    from axlab.core.errors import ModelLoadError
    from axlab.core.loading import load_model
    target = tmp_path / "v"
    done = export_variant(tiny_model("bert", seed=1), tokenizer, tmp_path / "src", base="a")
    # a killed export: a full-looking temporary folder of a process that is gone (old and new name formats)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = [tmp_path / f".v.axlab-tmp-{int(dead.stdout)}-abcd1234", tmp_path / ".v.axlab-tmp-1a2b3c4d"]
    for p in stale:
        shutil.copytree(done, p)
    with pytest.raises(ModelLoadError, match="interrupted export"):      # never mistaken for an export
        load_model(str(stale[0]))
    # a temporary folder of a live process (another export in progress) is left alone
    live = tmp_path / f".v.axlab-tmp-{os.getpid()}-livelive"
    live.mkdir()
    export_variant(tiny_model("bert", seed=2), tokenizer, target, base="b")
    assert load_variant(target).info["base"] == "b"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["src", "v", live.name])


def test_an_export_killed_between_its_two_renames_gets_the_old_folder_back(tokenizer, tmp_path):
    import shutil

    from axlab.core.folder import clean_leftovers
    done = export_variant(tiny_model("bert", seed=1), tokenizer, tmp_path / "src", base="a")
    shutil.copytree(done, tmp_path / ".v.axlab-old-deadbeef")          # moved aside, the new one never arrived
    assert clean_leftovers(tmp_path / "v") == []
    assert load_variant(tmp_path / "v").info["base"] == "a"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src", "v"]


def test_damaged_weights_are_detected(tokenizer, tmp_path):
    from safetensors.torch import load_file, save_file
    folder = export_variant(pruned_variant("bert"), tokenizer, tmp_path / "v", base="tiny")
    state = load_file(str(folder / "model.safetensors"))
    key = next(k for k in state if k.endswith("classifier.weight"))
    state[key] = state[key] + 0.5
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="different logits"):
        load_variant(folder)


def test_not_an_export(tmp_path):
    with pytest.raises(ModelLoadError, match="not an axlab export"):
        load_variant(tmp_path)


def test_default_model_round_trip_fresh_process(default_bundle, default_splits, tmp_path):
    """A pruned + int8 variant of the real model reloads in a fresh process with the same logits."""
    b = default_bundle
    model = prune.prune_heads(b.model, {0: [0, 5], 3: [1, 2, 3], 5: list(range(12))})
    model = quantize.int8_dynamic(model)
    texts = default_splits.test.texts[:24]
    folder = export_variant(model, b.tokenizer, tmp_path / "default-v", recipe=[], base="default", labels=b.labels)
    fresh = logits_in_fresh_process([folder], texts)[folder]
    want = predict_logits(model, b.tokenizer, texts)
    torch.testing.assert_close(fresh, want, atol=1e-5, rtol=0)
    assert (fresh.argmax(-1) == want.argmax(-1)).all()
    assert json.loads((folder / VARIANT_FILE).read_text())["plain"] is False


def test_int8_parity_on_a_cpu_that_clips_checks_the_graph_on_7_bit_weights(tokenizer, monkeypatch):
    """Where ONNX Runtime's int8 kernel clips (no AVX-VNNI), a fused int8 graph further from the int8
    computation than torch.ao is accepted only when the same writer's graph of the 7-bit twin passes."""
    import axlab.deploy.fused_onnx as F
    from axlab.deploy import export as E
    from axlab.deploy.onnx_export import parity_batches
    q = quantize.int8_dynamic(tiny_model("bert"))
    batches = parity_batches(tokenizer)
    q7 = E.seven_bit_twin(q)
    codes7 = [m.weight_int8 for m in q7.modules() if hasattr(m, "weight_int8")]
    assert codes7 and all(int(c.abs().max()) <= 64 for c in codes7)
    for a, b in zip([m for m in q.modules() if hasattr(m, "weight_int8")], [m for m in q7.modules()
                                                                           if hasattr(m, "weight_int8")]):
        assert (a.weight - b.weight).abs().max() <= a.weight_scale.max() + 1e-6      # at most one old step
    good = F.fused_predictor(F.build_fused_graph(q).SerializeToString())
    off = lambda b: good(b) + 0.05                                     # noqa: E731  (a clipped-looking result)
    if not F.int8_kernel_saturates():                                  # a VNNI CPU: the right graph passes as is
        assert E._int8_parity(q, good, batches) < 0.05
    monkeypatch.setattr(F, "int8_kernel_saturates", lambda: False)
    with pytest.raises(ExportError, match="differs from the int8 computation"):
        E._int8_parity(q, off, batches)                                 # a CPU that does not clip: refused
    monkeypatch.setattr(F, "int8_kernel_saturates", lambda: True)
    d7, t7 = E._int8_diffs(q7, F.fused_predictor(F.build_fused_graph(q7).SerializeToString()), batches)
    assert d7 <= 1.5 * t7 + 1e-3                                       # nothing clips 7-bit weights, on any CPU
    assert E._int8_parity(q, off, batches) >= 0.05                      # the writer checks out: reported
    wrong = quantize.int8_dynamic(tiny_model("bert", seed=3))          # a writer that wrote another model
    monkeypatch.setattr(F, "build_fused_graph", lambda m, cfg=None: F._Writer(wrong, F.FusedConfig()).write())
    with pytest.raises(ExportError, match="differs from the int8 computation"):
        E._int8_parity(q, off, batches)
