"""`axlab train`: fine-tune an encoder (or a classifier) on a dataset; cached, deterministic, early stopping.

Fast tests use a tiny BERT folder as the encoder; the slow test fine-tunes the packaged MiniLM on TREC
(small settings) and runs the whole loop on it: importance, prune, quantize, export, reload.
"""

import json

import pytest
import torch
from axlab.cli import main
from axlab.core.data import load_dataset
from axlab.core.errors import DataError
from axlab.core.loading import load_model
from axlab.core.testing import save_tiny
from axlab.core.train import TrainConfig, train

ROWS = {"cat": ["meow purr whiskers", "kitten naps all day"], "dog": ["woof bark fetch", "puppy on a leash"],
        "bird": ["tweet wings nest", "feathers and flying"]}


def _csv(path, n=20):
    lines = ["text,label"] + [f"{ROWS[c][i % 2]} {i},{c}" for i in range(n) for c in ROWS]
    path.write_text("\n".join(lines))
    return str(path)


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return str(save_tiny(tmp_path_factory.mktemp("enc") / "tiny", "bert"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return load_dataset(_csv(tmp_path_factory.mktemp("data") / "pets.csv"))


def _cfg(encoder, **kw):
    return TrainConfig(dataset="pets", encoder=encoder, epochs=kw.pop("epochs", 2), batch_size=16, lr=1e-3,
                       max_length=16, patience=kw.pop("patience", 1), **kw)


def test_train_saves_a_model_folder_that_loads_everywhere_and_is_cached(encoder, data, tmp_path, monkeypatch,
                                                                       one_thread):
    monkeypatch.setenv("AXLAB_HOME", str(tmp_path / "home"))
    card = train(_cfg(encoder), splits=data, progress=False)
    assert card["cached"] is False and card["labels"] == ["bird", "cat", "dog"]
    b = load_model(card["folder"])
    assert b.labels == ["bird", "cat", "dog"] and json.loads((tmp_path / "home").joinpath(
        "cache", "models", card["folder"].split("/")[-1], "axlab_card.json").read_text())["test"]["n"] == len(data.test)
    assert card["train_stats"]["history"] and card["test"]["per_class"]
    again = train(_cfg(encoder), splits=data, progress=False)
    assert again["cached"] is True and again["folder"] == card["folder"]
    other = train(_cfg(encoder, seed=1), splits=data, progress=False)       # other settings: another folder
    assert other["folder"] != card["folder"]


def test_training_is_deterministic(encoder, data, tmp_path, one_thread):
    a = train(_cfg(encoder), splits=data, out=tmp_path / "a", progress=False)
    b = train(_cfg(encoder), splits=data, out=tmp_path / "b", progress=False)
    wa, wb = load_model(a["folder"]).model.state_dict(), load_model(b["folder"]).model.state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_early_stopping_keeps_the_best_epoch(encoder, data, tmp_path, one_thread):
    # a learning rate too small to change anything: no epoch beats the first, so it stops after patience epochs
    card = train(TrainConfig(encoder=encoder, epochs=6, batch_size=16, lr=1e-12, max_length=16, patience=2),
                 splits=data, out=tmp_path / "m", progress=False)
    st = card["train_stats"]
    assert st["epochs_run"] == 3 and st["best_epoch"] == 1


def test_an_existing_head_with_the_same_labels_is_kept_in_its_order(data, tmp_path, one_thread):
    folder = save_tiny(tmp_path / "clf", "bert", num_labels=3)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["id2label"], cfg["label2id"] = {"0": "dog", "1": "bird", "2": "cat"}, {"dog": 0, "bird": 1, "cat": 2}
    (folder / "config.json").write_text(json.dumps(cfg))
    card = train(_cfg(str(folder), epochs=1), splits=data, out=tmp_path / "m", progress=False)
    assert card["kept_head"] is True and load_model(card["folder"]).labels == ["dog", "bird", "cat"]


def test_bad_training_inputs_are_clear_errors(encoder, tmp_path):
    with pytest.raises(DataError, match="epochs"):
        TrainConfig(epochs=0)
    one = tmp_path / "one.csv"
    one.write_text("text,label\n" + "\n".join(f"t {i},a" for i in range(30)))
    with pytest.raises(DataError, match="one class"):
        load_dataset(str(one))


def test_cli_train_on_own_split_files(encoder, tmp_path, capsys, one_thread):
    tr = _csv(tmp_path / "train.csv", 16)
    te = _csv(tmp_path / "test.csv", 4)
    assert main(["train", "--encoder", encoder, "--train", tr, "--test", te, "--epochs", "1", "--max-length", "16",
                 "--out", str(tmp_path / "out"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["split_sizes"]["test"] == 12 and any("as given" in n for n in out["notes"])
    assert main(["eval", out["folder"], "--train", tr, "--test", te, "--no-latency", "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["accuracy"] == pytest.approx(out["test_accuracy"])
    assert main(["train", "--encoder", encoder, "--json"]) == 2
    assert "No data to train on" in capsys.readouterr().err


@pytest.mark.slow
def test_the_whole_loop_runs_on_a_model_trained_on_trec(tmp_path):
    from axlab.analysis.importance import head_importance
    from axlab.compress import prune, quantize
    from axlab.core.loading import load_variant
    from axlab.core.measure import evaluate
    from axlab.deploy.export import export_variant
    from dataclasses import replace
    full = load_dataset("trec")
    splits = replace(full, validation=full.validation.head(150), test=full.test.head(200))   # small settings
    card = train(TrainConfig(dataset="trec", epochs=1, max_train=800, max_length=32, patience=1), splits=splits,
                 out=tmp_path / "trec", progress=False)
    assert card["labels"] == splits.label_names and card["test"]["accuracy"] > 1 / 6 + 0.1   # it learned something
    b = load_model(card["folder"])
    val = splits.validation.head(100)
    imp = head_importance(b.model, b.tokenizer, val, cache_results=False)
    pruned = prune.prune_heads(b.model, prune.heads_by_budget(imp, 0.25))
    small = quantize.int8_dynamic(pruned)
    acc = evaluate(small, b.tokenizer, splits.test.head(200))["accuracy"]
    folder = export_variant(pruned, b.tokenizer, tmp_path / "v", base=card["folder"], labels=b.labels)
    again = load_variant(folder)
    assert again.labels == splits.label_names
    assert evaluate(again.model, b.tokenizer, splits.test.head(200))["accuracy"] == pytest.approx(
        evaluate(pruned, b.tokenizer, splits.test.head(200))["accuracy"])
    assert 0 <= acc <= 1
