import json

from axlab.cli import main
from axlab.core.testing import save_tiny


def _csv(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("text,label\n" + "\n".join(f"this film is {'good' if i % 2 else 'bad'} {i},{i % 2}" for i in range(60)))
    return str(p)


def test_eval_json(tmp_path, capsys):
    folder = save_tiny(tmp_path / "m")
    assert main(["eval", str(folder), "--dataset", _csv(tmp_path), "--json", "--no-latency"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert 0 <= out["accuracy"] <= 1 and out["size_bytes"] > 0 and out["n"] == 9


def test_bad_input_exit_code_and_hint(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "x" / "y" / "z"), "--json"]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "how to fix:" in err


# ----------------------------------------------------------------------------- bad inputs (issue 18)

import pytest  # noqa: E402


@pytest.mark.parametrize("argv, words", [
    (["quantize", "/no/such/model", "--method", "gpfq", "--calibration", "-5"], "--calibration must be a positive"),
    (["quantize", "/no/such/model", "--method", "int8", "--bits", "3"], "--bits do(es) not apply to --method int8"),
    (["quantize", "/no/such/model", "--method", "rtn", "--bits", "12"], "--bits must be between 2 and 8"),
    (["quantize", "/no/such/model", "--method", "rtn", "--calibration", "64"], "only apply to --method gpfq"),
    (["quantize", "/no/such/model", "--method", "gptq", "--avg-bits", "3"], "only apply to --method gpfq"),
    (["prune", "/no/such/model", "--heads-fraction", "1.5"], "--heads-fraction must be"),
])
def test_bad_options_are_refused_before_the_model_loads(argv, words, capsys):
    # the model path does not exist: the option error must come first (checked before the slow part)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert words in err and "how to fix:" in err and "Traceback" not in err


def test_limit_must_be_positive(capsys):
    with pytest.raises(SystemExit) as e:
        main(["eval", "default", "--limit", "-5"])
    assert e.value.code == 2 and "must be at least 1" in capsys.readouterr().err


def test_attribute_target_by_label_name(tmp_path, capsys):
    folder = save_tiny(tmp_path / "m", num_labels=3)
    import json as _json
    cfg = _json.loads((folder / "config.json").read_text())
    cfg["id2label"] = {"0": "sports", "1": "world", "2": "arts"}
    cfg["label2id"] = {"sports": 0, "world": 1, "arts": 2}
    (folder / "config.json").write_text(_json.dumps(cfg))
    assert main(["attribute", str(folder), "--text", "a fine film", "--target", "world", "--n-steps", "2",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["target"] == 1 and out["label"] == "world"
    assert main(["attribute", str(folder), "--text", "a fine film", "--target", "weather", "--json"]) == 2
    err = capsys.readouterr().err
    assert "not one of the model's classes" in err and "1 = world" in err


def test_damaged_or_custom_code_models_exit_2_with_a_fix(tmp_path, capsys):
    folder = save_tiny(tmp_path / "m")
    w = folder / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-5000])
    assert main(["eval", str(folder), "--dataset", _csv(tmp_path), "--no-latency"]) == 2
    err = capsys.readouterr().err
    assert "truncated" in err and "how to fix:" in err
    folder = save_tiny(tmp_path / "c")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForSequenceClassification": "x.Y"}
    (folder / "config.json").write_text(json.dumps(cfg))
    assert main(["eval", str(folder), "--dataset", _csv(tmp_path), "--no-latency"]) == 2
    assert "auto_map" in capsys.readouterr().err


def test_eval_json_has_per_class_figures_and_latency_spread(tmp_path, capsys):
    folder = save_tiny(tmp_path / "m")
    assert main(["eval", str(folder), "--dataset", _csv(tmp_path), "--json", "--threads", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["per_class"]) == {"LABEL_0", "LABEL_1"} and len(out["confusion"]) == 2
    lo, hi = out["latency_b1_spread_ms"]
    assert lo <= hi and out["latency_b1_ms"] > 0
    assert any("output indices" in n for n in out["notes"])      # integer labels 0/1 -> LABEL_0/1, said so


def test_prune_compares_with_the_base_interleaved_and_saves_the_base_row(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AXLAB_DATA", str(tmp_path / "store"))
    folder = save_tiny(tmp_path / "m")
    assert main(["prune", str(folder), "--dataset", _csv(tmp_path), "--heads-fraction", "0.25", "--by", "random",
                 "--save", "p25", "--json", "--threads", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    c = out["compare"]
    assert c["speedup_b1_range"][0] <= c["speedup_b1"] <= c["speedup_b1_range"][1]
    assert isinstance(c["within_noise_b1"], bool) and "x" in c["speedup_b1_text"]
    assert out["baseline"]["latency_b1_ms"] == out["pruned"]["latency_vs_base"]["b1"]["base_ms"]
    from axlab.store.variants import VariantStore
    names = sorted(v.name for v in VariantStore().list())
    assert names == ["base", "p25"]


def test_prune_distils_a_soup_and_saves_its_replayable_step(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AXLAB_DATA", str(tmp_path / "store"))
    folder = save_tiny(tmp_path / "m")
    assert main(["prune", str(folder), "--dataset", _csv(tmp_path), "--heads-fraction", "0.25", "--by", "random",
                 "--distill-steps", "2", "--distill-soup", "2", "--save", "s2", "--json", "--threads", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["distill_soup"] == 2 and out["recipe_ops"][-1] == "distill"
    from axlab.store.variants import VariantStore
    (v,) = [v for v in VariantStore().list() if v.name == "s2"]
    assert v.recipe[-1]["params"]["soup"] == 2
    with pytest.raises(SystemExit):
        main(["prune", str(folder), "--heads-fraction", "0.25", "--distill-steps", "2", "--distill-soup", "0"])
    assert "not a whole number >= 1" in capsys.readouterr().err
    assert main(["prune", str(folder), "--heads-fraction", "0.25", "--distill-soup", "3"]) == 2   # nothing distilled
    assert "--distill-steps" in capsys.readouterr().err


# ----------------------------------------------------------------------------- image models and image data (issue 16)

def _image_folder(tmp_path, n=8):
    """An image folder (one subfolder per class c0/c1/c2) of the tiny learnable squares, plus a CSV of its paths."""
    from PIL import Image

    from axlab.core.testing import tiny_image_split
    split = tiny_image_split(3 * n, seed=5)
    root = tmp_path / "imgs"
    rows = ["path,label"]
    for i, (img, y) in enumerate(zip(split.images, split.labels)):
        (root / f"c{y}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / f"c{y}" / f"{i}.png")
        rows.append(f"imgs/c{y}/{i}.png,c{y}")
    (tmp_path / "imgs.csv").write_text("\n".join(rows) + "\n")
    return root


def test_eval_image_model_on_an_image_folder_zip_and_csv(tmp_path, capsys):
    import shutil

    from axlab.core.testing import save_tiny_vision
    model = save_tiny_vision(tmp_path / "vit", "vit")
    root = _image_folder(tmp_path)
    zipped = shutil.make_archive(str(tmp_path / "imgs"), "zip", root)
    for data in (str(root), zipped, str(tmp_path / "imgs.csv")):
        assert main(["eval", str(model), "--dataset", data, "--json", "--no-latency", "--split", "train"]) == 0, data
        out = json.loads(capsys.readouterr().out)
        assert 0 <= out["accuracy"] <= 1 and out["n"] > 0 and out["labels"] == ["c0", "c1", "c2"]


def test_text_model_with_image_data_and_image_model_with_text_data_are_clear_errors(tmp_path, capsys):
    from axlab.core.testing import save_tiny_vision
    text_model = save_tiny(tmp_path / "bert")
    vit = save_tiny_vision(tmp_path / "vit", "vit")
    root = _image_folder(tmp_path)
    assert main(["eval", str(text_model), "--dataset", str(root), "--no-latency"]) == 2
    err = capsys.readouterr().err
    assert "is a text model" in err and "image data" in err and "how to fix:" in err
    assert main(["eval", str(text_model), "--dataset", "mnist", "--no-latency"]) == 2
    assert "is a text model" in capsys.readouterr().err
    assert main(["eval", str(vit), "--dataset", _csv(tmp_path), "--no-latency"]) == 2
    err = capsys.readouterr().err
    assert "is an image model" in err and "--dataset mnist" in err
    assert main(["train", "--dataset", "mnist"]) == 2
    assert "prepare --only vision" in capsys.readouterr().err


def test_dataset_modality_sniffs_image_csvs(tmp_path):
    from axlab.cli.common import dataset_modality
    _image_folder(tmp_path)
    assert dataset_modality("mnist") == dataset_modality("mnist_shifted") == "image"
    assert dataset_modality(str(tmp_path / "imgs")) == dataset_modality(str(tmp_path / "imgs.csv")) == "image"
    assert dataset_modality(_csv(tmp_path)) == dataset_modality("rotten_tomatoes") == "text"
    assert dataset_modality(None) is None


def test_prune_and_quantize_commands_run_on_an_image_model(tmp_path, capsys):
    from axlab.core.testing import save_tiny_vision
    vit = save_tiny_vision(tmp_path / "vit", "vit")
    root = str(_image_folder(tmp_path))
    assert main(["prune", str(vit), "--dataset", root, "--heads-fraction", "0.25", "--no-latency", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out
    assert main(["quantize", str(vit), "--dataset", root, "--method", "rtn", "--bits", "4", "--no-latency",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)
    assert main(["quantize", str(vit), "--dataset", root, "--method", "gptq", "--bits", "3", "--calibration", "8",
                 "--no-latency", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["method"] == "gptq" and out["recipe"][0]["op"] == "quantize_gptq" and 0 <= out["accuracy"] <= 1


def test_datasets_lists_the_image_sets(capsys):
    assert main(["datasets", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert "mnist" in out and "mnist_shifted" in out and "rotten_tomatoes" in out


def test_prepare_only_choices_are_checked(capsys):
    with pytest.raises(SystemExit):
        main(["prepare", "--only", "audio"])


def test_attention_and_attribute_take_an_image_file_for_an_image_model(tmp_path, capsys):
    from PIL import Image

    from axlab.core.testing import save_tiny_vision, tiny_image_split
    vit = save_tiny_vision(tmp_path / "vit", "vit")
    Image.fromarray(tiny_image_split(1).images[0]).save(tmp_path / "x.png")
    assert main(["attention", str(vit), "--image", str(tmp_path / "x.png"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["grid"] == [4, 4] and len(out["rollout_cls_patches"]) == 4 and out["n_heads"] == 4
    assert main(["attribute", str(vit), "--image", str(tmp_path / "x.png"), "--target", "c1", "--n-steps", "4",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["label"] == "c1" and len(out["saliency"]) > 0
    assert main(["attention", str(vit), "--text", "a film"]) == 2
    assert "is an image model" in capsys.readouterr().err
    assert main(["attention", str(save_tiny(tmp_path / "bert")), "--image", str(tmp_path / "x.png")]) == 2
    assert "is a text model" in capsys.readouterr().err
