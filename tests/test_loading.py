import json

import pytest
import torch
from axlab.core.errors import ModelLoadError, UnsupportedModelError
from axlab.core.loading import load_model
from axlab.core.testing import save_tiny, tiny_model
from conftest import logits


def test_loads_folder_of_each_arch(tmp_path, arch, batch):
    folder = save_tiny(tmp_path / arch, arch)
    ref = tiny_model(arch)
    b = load_model(str(folder))
    assert b.arch == arch
    assert b.model.config._attn_implementation == "axlab"
    assert b.labels == ["LABEL_0", "LABEL_1"]
    assert (b.n_layers, b.n_heads) == (2, 4)
    torch.testing.assert_close(logits(b.model, batch), logits(ref, batch), atol=1e-6, rtol=0)


def test_folder_without_weights(tmp_path):
    folder = save_tiny(tmp_path / "m")
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="no weights") as e:
        load_model(str(folder))
    assert "save_pretrained" in e.value.hint


def test_folder_without_config(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(str(tmp_path / "empty"))


def test_pickle_checkpoint_refused_unless_allowed(tmp_path, batch):
    folder = save_tiny(tmp_path / "m")
    model = tiny_model()
    (folder / "model.safetensors").unlink()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="pickle") as e:
        load_model(str(folder))
    assert "allow_pickle=True" in e.value.hint
    b = load_model(str(folder), allow_pickle=True)
    torch.testing.assert_close(logits(b.model, batch), logits(model, batch), atol=1e-6, rtol=0)


def test_encoder_without_classification_head(tmp_path):
    from axlab.core.train import encoder_dir
    with pytest.raises(ModelLoadError, match="no sequence-classification head") as e:
        load_model(str(encoder_dir()))
    assert "ForSequenceClassification" in e.value.hint


def test_unsupported_architecture(tmp_path):
    from transformers import GPT2Config, GPT2ForSequenceClassification
    cfg = GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=100, n_positions=32)
    m = GPT2ForSequenceClassification(cfg)
    m.config.architectures = ["GPT2ForSequenceClassification"]
    m.save_pretrained(tmp_path / "gpt2", safe_serialization=True)
    with pytest.raises(UnsupportedModelError, match="'gpt2' is not supported") as e:
        load_model(str(tmp_path / "gpt2"))
    assert "bert" in e.value.hint


def test_unknown_hub_id_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="hub") as e:
        load_model("no-such-org/no-such-model-xyz")
    assert "network" in e.value.hint


def test_missing_folder_and_file(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "a" / "b" / "c"))
    f = tmp_path / "f.txt"
    f.write_text("x")
    with pytest.raises(ModelLoadError, match="is a file"):
        load_model(str(f))


def test_default_not_built(monkeypatch, tmp_path):
    monkeypatch.setenv("AXLAB_HOME", str(tmp_path))
    with pytest.raises(ModelLoadError, match="not been built") as e:
        load_model("default")
    assert "axlab prepare" in e.value.hint


def test_load_does_not_execute_remote_code(tmp_path):
    folder = save_tiny(tmp_path / "m")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForSequenceClassification": "evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "evil.py").write_text("raise SystemExit('remote code was executed')\n")
    # refused with a clear error (loading it with the stock class would silently ignore its code); never imported
    with pytest.raises(ModelLoadError, match="auto_map") as e:
        load_model(str(folder))
    assert "trust_remote_code" in e.value.hint and "auto_map" in e.value.hint


def test_failing_remote_code_is_a_model_load_error(tmp_path):
    folder = save_tiny(tmp_path / "m")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "custom.MyConfig", "AutoModelForSequenceClassification": "custom.MyModel"}
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "custom.py").write_text("raise RuntimeError('broken custom code')\n")
    with pytest.raises(ModelLoadError, match="own code.*failed") as e:
        load_model(str(folder), trust_remote_code=True)
    assert "broken custom code" in e.value.message and e.value.hint


@pytest.mark.parametrize("keep", [4, 100, -1000])
def test_truncated_safetensors_is_a_clear_error_before_loading(tmp_path, keep):
    folder = save_tiny(tmp_path / "m")
    w = folder / "model.safetensors"
    raw = w.read_bytes()
    w.write_bytes(raw[:keep])                       # cut inside the length, inside the header, inside the data
    with pytest.raises(ModelLoadError, match="safetensors|truncated") as e:
        load_model(str(folder))
    assert "again" in e.value.hint
