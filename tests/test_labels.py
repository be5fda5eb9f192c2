"""Labels matched by name, the user's own splits, and per-class figures (tiny models, several label schemes).

The reference in every accuracy check is a hand-written loop over the model's ``id2label``:
predict, look up the predicted name, compare with the row's label name.
"""

import json

import numpy as np
import pytest
import torch
from axlab.cli import main
from axlab.core.data import Split, align_labels, label_mapping, load_dataset
from axlab.core.errors import DataError
from axlab.core.measure import evaluate, measure, predict_logits
from axlab.core.testing import tiny_model, tiny_split, tiny_tokenizer

NAMES = ["sports", "business", "world", "science"]          # the model's order: not alphabetical


def _model(names, arch="bert", seed=0):
    m = tiny_model(arch, num_labels=len(names), seed=seed)
    m.config.id2label = dict(enumerate(names))
    m.config.label2id = {n: i for i, n in enumerate(names)}
    # make the tiny model confident and varied: a large random head over the pooled features
    with torch.no_grad():
        head = [mod for mod in m.modules() if isinstance(mod, torch.nn.Linear)][-1]
        head.weight.mul_(40)
    return m


def _labelled(model, tok, n=80, seed=0, noise=0.25):
    """Texts labelled (by name) with the model's own prediction, a share of them changed at random."""
    texts = tiny_split(n, seed=seed).texts
    pred = predict_logits(model, tok, texts).argmax(-1).tolist()
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    rng = np.random.default_rng(seed)
    labels = [names[p] if rng.random() > noise else names[rng.integers(len(names))] for p in pred]
    return texts, labels


def _hand_accuracy(model, tok, texts, label_names):
    hits = 0
    for text, name in zip(texts, label_names):
        with torch.no_grad():
            logits = model(**tok(text, return_tensors="pt")).logits[0]
        hits += model.config.id2label[int(logits.argmax())] == name
    return hits / len(texts)


def _csv(path, rows, cols=("text", "label")):
    import csv
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        w.writerows(rows)
    return str(path)


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.mark.parametrize("arch", ["bert", "distilbert"])
def test_eval_matches_a_hand_written_loop_over_id2label(arch, tok):
    model = _model(NAMES, arch)
    texts, labels = _labelled(model, tok)
    names = sorted(set(labels))                       # how a CSV's labels are numbered: alphabetically
    split = Split(texts, [names.index(x) for x in labels], names)
    hand = _hand_accuracy(model, tok, texts, labels)
    got = evaluate(model, tok, split)
    assert got["accuracy"] == pytest.approx(hand)
    positional = float((predict_logits(model, tok, texts).argmax(-1).numpy() == np.array(split.labels)).mean())
    assert positional != pytest.approx(hand)          # the old, position-based figure was wrong here
    assert got["labels"] == NAMES and np.array(got["confusion"]).sum() == len(texts)
    assert sum(v["support"] for v in got["per_class"].values()) == len(texts)


def test_cli_eval_on_a_csv_with_unusual_columns_matches_the_hand_loop(tmp_path, tok, capsys):
    model = _model(NAMES, seed=3)
    folder = tmp_path / "m"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    texts, labels = _labelled(model, tok, n=90, seed=3)
    rows = [(f"r{i}", t, y) for i, (t, y) in enumerate(zip(texts, labels))]
    data = _csv(tmp_path / "mine.csv", rows, ("row id", "Utterance Text", "gold intent"))
    test_file = _csv(tmp_path / "test.csv", rows[60:], ("row id", "Utterance Text", "gold intent"))
    train_file = _csv(tmp_path / "train.csv", rows[:60], ("row id", "Utterance Text", "gold intent"))
    args = ["eval", str(folder), "--text-column", "Utterance Text", "--label-column", "gold intent", "--json",
            "--no-latency", "--train", train_file, "--test", test_file]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 30                                       # the test file, as given
    assert out["accuracy"] == pytest.approx(_hand_accuracy(model, tok, texts[60:], labels[60:]))
    assert set(out["per_class"]) <= set(NAMES) and len(out["confusion"]) == 4
    assert any("as given" in n for n in out["notes"])
    # one file: axlab splits it and says so
    assert main(["eval", str(folder), "--dataset", data, "--text-column", "Utterance Text", "--label-column",
                 "gold intent", "--json", "--no-latency"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert any("axlab split" in n and "seed 0" in n for n in out["notes"])


def test_generic_label_names_and_integer_labels_map_by_index_with_a_notice(tok):
    generic = tiny_model("bert", num_labels=3)                  # LABEL_0..2
    texts = tiny_split(30).texts
    split = Split(texts, [i % 3 for i in range(30)], ["neg", "neu", "pos"])
    m = label_mapping(split.label_names, ["LABEL_0", "LABEL_1", "LABEL_2"])
    assert m["by"] == "index" and "generic" in m["note"]
    assert align_labels(split, generic).labels == split.labels
    named = _model(["c", "a", "b"])
    ints = Split(texts, [i % 3 for i in range(30)], ["0", "1", "2"])
    m = label_mapping(ints.label_names, ["c", "a", "b"])
    assert m["by"] == "index" and "integers" in m["note"] and "0 -> 'c'" in m["note"]
    assert evaluate(named, tok, ints)["n"] == 30


def test_integer_labels_in_a_file_are_numbered_by_value(tmp_path):
    rows = [(f"text {i}", [2, 10, 1][i % 3]) for i in range(60)]
    s = load_dataset(_csv(tmp_path / "ints.csv", rows))
    assert s.label_names == ["1", "2", "10"]                    # not "1", "10", "2"


def test_unknown_labels_and_extra_classes_are_clear_errors(tmp_path, tok, capsys):
    model = _model(NAMES)
    texts = tiny_split(40).texts
    unknown = Split(texts, [i % 2 for i in range(40)], ["spam", "sports"])
    with pytest.raises(DataError, match="does not know: 'spam'") as e:
        evaluate(model, tok, unknown)
    assert "'business'" in e.value.message and "axlab train" in e.value.hint
    extra = Split(texts, [i % 5 for i in range(40)], NAMES + ["weather"])
    with pytest.raises(DataError, match="5 classes.*only 4"):
        evaluate(model, tok, extra)
    from axlab.analysis.importance import head_importance
    with pytest.raises(DataError):
        head_importance(model, tok, extra, cache_results=False)
    # through the CLI: exit 2 with the fix, no IndexError traceback
    folder = tmp_path / "m"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    data = _csv(tmp_path / "x.csv", [(t, (NAMES + ["weather"])[i % 5]) for i, t in enumerate(texts * 2)])
    assert main(["eval", str(folder), "--dataset", data, "--json", "--no-latency"]) == 2
    err = capsys.readouterr().err
    assert "only 4" in err and "how to fix:" in err and "Traceback" not in err


def test_a_subset_of_classes_reports_macro_f1_over_the_classes_present(tok):
    model = _model(NAMES, seed=5)
    texts, labels = _labelled(model, tok, n=80, seed=5)
    keep = [i for i, y in enumerate(labels) if y in ("world", "sports")]
    split = Split([texts[i] for i in keep], [["sports", "world"].index(labels[i]) for i in keep], ["sports", "world"])
    ev = measure(model, tok, split, with_latency=False)
    f1s = [ev.per_class[c]["f1"] for c in ("sports", "world") if ev.per_class[c]["support"]]
    assert ev.macro_f1 == pytest.approx(np.mean(f1s))
    assert ev.per_class["business"]["f1"] is None and "present" in " ".join(ev.notes)


def test_importance_follows_names_not_positions(tok):
    from axlab.analysis.importance import head_importance
    model = _model(NAMES, seed=7)
    texts, labels = _labelled(model, tok, n=40, seed=7)
    alpha = sorted(NAMES)
    by_name = Split(texts, [alpha.index(x) for x in labels], alpha)
    by_index = Split(texts, [NAMES.index(x) for x in labels])        # already model indices
    a = head_importance(model, tok, by_name, cache_results=False)
    b = head_importance(model, tok, by_index, cache_results=False)
    assert torch.allclose(torch.as_tensor(a), torch.as_tensor(b))


def test_own_split_files_column_and_manifest_are_used_as_given(tmp_path):
    rows = [(f"sentence number {i}", ["b", "a", "c"][i % 3]) for i in range(90)]
    tr, va, te = rows[:50], rows[50:70], rows[70:]
    files = {k: _csv(tmp_path / f"{k}.csv", part) for k, part in (("train", tr), ("validation", va), ("test", te))}
    s = load_dataset(**files)
    assert s.test.texts == [r[0] for r in te] and s.validation.texts == [r[0] for r in va]
    assert s.train.texts == [r[0] for r in tr] and s.label_names == ["a", "b", "c"]
    assert [s.label_names[y] for y in s.test.labels] == [r[1] for r in te]
    assert "as given" in s.notes[0]
    # train + test only: validation carved out of train, and said so
    s2 = load_dataset(train=files["train"], test=files["test"])
    assert s2.test.texts == [r[0] for r in te] and len(s2.train) + len(s2.validation) == 50
    assert "carved validation" in s2.notes[0]
    # a split column (named "split": found on its own), with unusual values
    col = [(t, y, ["train", "dev", "TEST"][0 if i < 50 else 1 if i < 70 else 2]) for i, (t, y) in enumerate(rows)]
    s3 = load_dataset(_csv(tmp_path / "col.csv", col, ("text", "label", "split")))
    assert s3.sizes == {"train": 50, "validation": 20, "test": 20} and s3.test.texts == s.test.texts
    # a manifest naming the files (relative paths)
    (tmp_path / "data.json").write_text(json.dumps({"train": "train.csv", "validation": "validation.csv",
                                                    "test": "test.csv"}))
    s4 = load_dataset(str(tmp_path / "data.json"))
    assert s4.sizes == s.sizes and s4.test.texts == s.test.texts and s4.name == "data"
    with pytest.raises(DataError, match="split values"):
        load_dataset(_csv(tmp_path / "bad.csv", [(t, y, "holdout?") for t, y, _ in col], ("text", "label", "split")))


def test_eval_of_a_missing_split_is_a_clear_error(tmp_path, capsys):
    from axlab.core.testing import save_tiny
    folder = save_tiny(tmp_path / "m")
    te = _csv(tmp_path / "te.csv", [(f"text {i}", i % 2) for i in range(20)])
    assert main(["eval", str(folder), "--test", te, "--split", "validation", "--no-latency"]) == 2
    assert "validation split" in capsys.readouterr().err
