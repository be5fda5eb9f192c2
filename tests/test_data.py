import pytest
from axlab.core.data import DATASETS, load_dataset
from axlab.core.errors import DataError


def test_rotten_tomatoes_splits_fixed_and_disjoint():
    a = load_dataset("rotten_tomatoes")
    b = load_dataset("rotten_tomatoes")
    assert a.sizes == {"train": 9752, "validation": 1000, "test": 2000}
    assert a.test.texts == b.test.texts and a.train.texts[:50] == b.train.texts[:50]
    s = [set(a.train.texts), set(a.validation.texts), set(a.test.texts)]
    assert not (s[0] & s[1]) and not (s[0] & s[2]) and not (s[1] & s[2])
    assert a.label_names == ["rotten", "fresh"]
    # stratified: class balance of test close to train
    frac = lambda sp: sum(sp.labels) / len(sp)  # noqa: E731
    assert abs(frac(a.test) - frac(a.train)) < 0.01
    c = load_dataset("rotten_tomatoes", seed=1)
    assert c.test.texts != a.test.texts
    assert len(a.file_hash) == 64 and a.key != c.key


@pytest.mark.parametrize("name,n_classes", [("sms_spam", 2), ("trec", 6)])
def test_other_registry_datasets(name, n_classes):
    s = load_dataset(name)
    assert len(s.label_names) == n_classes
    assert set(s.train.labels) == set(range(n_classes))
    assert len(s.validation) > 0 and len(s.test) > 0


def _csv(tmp_path, text, name="d.csv", encoding="utf-8"):
    p = tmp_path / name
    p.write_bytes(text.encode(encoding))
    return str(p)


def test_user_csv_and_tsv(tmp_path):
    rows = "\n".join(f"example number {i},{'pos' if i % 2 else 'neg'}" for i in range(40))
    s = load_dataset(_csv(tmp_path, "text,label\n" + rows))
    assert s.label_names == ["neg", "pos"] and sum(s.sizes.values()) == 40
    tsv = "\n".join(f"review {i}\t{i % 3}" for i in range(30))
    s = load_dataset(_csv(tmp_path, "sentence\tclass\n" + tsv, "d.tsv"))
    assert s.label_names == ["0", "1", "2"]
    s = load_dataset(_csv(tmp_path, "body,y\n" + rows, "e.csv"), text_column="body", label_column="y")
    assert len(s.train) > 0


def test_csv_missing_label_column(tmp_path):
    with pytest.raises(DataError, match="no label column") as e:
        load_dataset(_csv(tmp_path, "text,score\na,1\nb,2\n"))
    assert "label_column" in e.value.hint and "score" in e.value.message


def test_csv_missing_text_column(tmp_path):
    with pytest.raises(DataError, match="no text column named 'body'"):
        load_dataset(_csv(tmp_path, "text,label\na,1\nb,0\n"), text_column="body")


def test_csv_one_class(tmp_path):
    with pytest.raises(DataError, match="only one class"):
        load_dataset(_csv(tmp_path, "text,label\n" + "\n".join(f"t{i},x" for i in range(20))))


def test_csv_empty_texts(tmp_path):
    with pytest.raises(DataError, match="1 empty texts"):
        load_dataset(_csv(tmp_path, "text,label\nfine,a\n   ,b\nok,a\n"))


def test_csv_bad_encoding(tmp_path):
    with pytest.raises(DataError, match="not UTF-8") as e:
        load_dataset(_csv(tmp_path, "text,label\ncaf\u00e9,a\nbar,b\n", encoding="latin-1"))
    assert "UTF-8" in e.value.hint


def test_unknown_name():
    with pytest.raises(DataError, match="neither a known dataset"):
        load_dataset("imdb_nope")
    assert "rotten_tomatoes" in DATASETS
