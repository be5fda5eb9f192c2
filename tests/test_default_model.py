"""Claims about the real default model (built once by `axlab prepare`, then cached)."""
import copy
import json
import time

import pytest
import torch
from axlab.cli import main
from axlab.core.measure import tokenize
from axlab.core.train import default_model_dir, prepare
from conftest import logits


def test_card_and_cache(default_bundle):
    t0 = time.perf_counter()
    card = prepare()                      # second call: from the cache
    assert card["cached"] is True and time.perf_counter() - t0 < 5
    assert card["test"]["accuracy"] >= 0.83
    assert card["split_sizes"] == {"train": 9752, "validation": 1000, "test": 2000}
    assert len(card["data_sha256"]) == 64 and card["seed"] == 0
    on_disk = json.loads((default_model_dir() / "axlab_card.json").read_text())
    assert on_disk["test"] == card["test"]
    assert default_bundle.labels == ["rotten", "fresh"]


def test_default_axlab_attention_equals_eager(default_bundle, default_splits):
    m = default_bundle.model
    stock = copy.deepcopy(m)
    stock.set_attn_implementation("eager")
    batch = tokenize(default_bundle.tokenizer, default_splits.test.texts[:16])
    torch.testing.assert_close(logits(m, batch), logits(stock, batch), atol=1e-5, rtol=0)


def test_cli_eval_default_json(default_bundle, capsys):
    assert main(["eval", "default", "--json", "--limit", "200"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("accuracy", "macro_f1", "latency_b1_ms", "latency_b32_ms", "size_bytes", "params", "nonzero"):
        assert out[key] is not None, key
    assert out["accuracy"] > 0.75 and out["hardware"]["cpu"]


@pytest.mark.slow
def test_cli_eval_matches_a_hand_written_loop_over_id2label(default_bundle, default_splits, tmp_path, capsys):
    # the default model's id2label is (rotten, fresh): not alphabetical. A user's CSV with string labels is
    # numbered alphabetically (fresh, rotten), and its own split column says which rows are test.
    import csv

    import torch
    from axlab.cli import main
    names = default_splits.label_names
    test = default_splits.test.head(400)
    path = tmp_path / "reviews.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Review Text", "Verdict", "fold"])
        for t, y in zip(default_splits.train.texts[:50], default_splits.train.labels[:50]):
            w.writerow([t, names[y], "train"])
        for t, y in zip(test.texts, test.labels):
            w.writerow([t, names[y], "test"])
    assert main(["eval", "default", "--dataset", str(path), "--text-column", "Review Text", "--label-column",
                 "Verdict", "--split-column", "fold", "--no-latency", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    model, tok = default_bundle.model, default_bundle.tokenizer
    id2label = model.config.id2label
    hits = 0
    for i in range(0, len(test), 50):
        batch = tok(test.texts[i:i + 50], padding=True, truncation=True, max_length=128, return_tensors="pt")
        with torch.no_grad():
            pred = model(**batch).logits.argmax(-1).tolist()
        hits += sum(id2label[p] == names[y] for p, y in zip(pred, test.labels[i:i + 50]))
    assert out["n"] == len(test)
    assert out["accuracy"] == pytest.approx(hits / len(test))
    assert out["accuracy"] > 0.75                                  # not the label-swapped ~0.2
