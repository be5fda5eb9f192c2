"""The workbench in image mode (issue 16, part 7), driven by AppTest: every page renders for an image classifier
on MNIST, the Attention page shows patch heatmaps and the rollout overlay over a chosen image, Compare explains
two variants as pixel saliency, and a text model given image data (or the other way round) gets a clear message.

Runs on a tiny random ViT saved as a folder (10 labels "0".."9", a 28 x 28 grey image processor); the real
default vision model (``default-vision``) too when it is built in the cache.
"""

import io
import zipfile

import numpy as np
import pytest
from test_app import ROOT, _variants, assert_clean, errors, new_app, page

PAGES = ["1_Model_and_data", "2_Attention", "3_Heads", "4_Prune", "5_Quantize", "6_Compare", "8_Sweep"]


def _save_tiny_vit(folder):
    from transformers import ViTImageProcessor

    from axlab.core.testing import tiny_vision_model
    model = tiny_vision_model("vit", num_labels=10)
    model.config.id2label = {i: str(i) for i in range(10)}
    model.config.label2id = {str(i): i for i in range(10)}
    model.save_pretrained(folder)
    ViTImageProcessor(size={"height": 28, "width": 28}, image_mean=[0.5], image_std=[0.5]).save_pretrained(folder)
    return str(folder)


def _library_loads_images(folder) -> bool:
    from axlab.core.loading import load_model
    try:
        load_model(folder)
    except Exception:  # noqa: BLE001  (the library does not load image classifiers yet)
        return False
    return True


def _load_image_folder(real):
    """A stand-in for load_model while the library cannot load image classifiers: image folders load with
    AutoModelForImageClassification + AutoImageProcessor, everything else goes to the real loader."""
    def load(source="default", *, allow_pickle=False, **kw):
        from pathlib import Path
        p = Path(str(source))
        if not (p / "preprocessor_config.json").exists():
            return real(source, allow_pickle=allow_pickle, **kw)
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        from axlab.core.attention import use_axlab_attention
        from axlab.core.loading import ModelBundle
        model = AutoModelForImageClassification.from_pretrained(str(p), attn_implementation="eager")
        model.eval()
        use_axlab_attention(model)
        labels = [str(model.config.id2label[i]) for i in range(model.config.num_labels)]
        return ModelBundle(model=model, tokenizer=AutoImageProcessor.from_pretrained(str(p)), labels=labels,
                           source=str(source), path=str(p))
    return load


@pytest.fixture(scope="module")
def vit_folder(tmp_path_factory):
    folder = _save_tiny_vit(tmp_path_factory.mktemp("tiny-vit") / "vit")
    if _library_loads_images(folder):
        yield folder
        return
    import axlab.core.loading as loading
    mp = pytest.MonkeyPatch()
    mp.setattr(loading, "load_model", _load_image_folder(loading.load_model))
    try:
        yield folder
    finally:
        mp.undo()


def vision_app(folder, **state):
    return new_app(folder, dataset="mnist", measure_n=50, latency_runs=5, **state)


def charts(at) -> list[str]:
    return [c.proto.spec for c in at.get("plotly_chart")]


# ----------------------------------------------------------------------------- every page

def test_every_page_renders_for_an_image_model(vit_folder):
    at = vision_app(vit_folder)
    assert_clean(at, "home")
    sidebar = " ".join(m.value for m in at.sidebar.markdown)
    assert "2 layers x 4 heads" in sidebar and "reads images" in sidebar, sidebar
    for name in PAGES:
        page(at, name)
        assert_clean(at, name)
        assert at.title, f"{name} has no title"
        assert "axlab workbench" in at.sidebar.markdown[0].value, f"{name} lacks the shared sidebar"


def _chart_types(at) -> str:
    return " ".join(charts(at))


def test_attention_page_draws_patch_heatmaps_and_the_rollout_over_the_chosen_image(vit_folder):
    at = page(vision_app(vit_folder), "2_Attention")
    assert_clean(at, "attention")
    assert not at.main.text_input, "an image model gets an image picker, not a text box"
    assert at.number_input(key="attn_img_validation_index").value == 0
    assert at.get("image"), "the chosen image is shown as a thumbnail"
    specs = {c.proto.spec for c in at.get("plotly_chart")}
    assert len(specs) >= 3                          # every head of a layer, one head, rollout
    assert all('"type":"image"' in s for s in specs), "each map is drawn over the image"
    assert any("Attention rollout into [CLS]" in s for s in specs)
    assert any("every head's attention" in s for s in specs)
    assert any("Layer 0, head 0: attention from" in s for s in specs)
    caption = " ".join(c.value for c in at.caption)
    assert "validation image **0**" in caption and "4 x 4 patches" in caption, caption
    # another image, another layer, max over heads, a query patch
    at.number_input(key="attn_img_validation_index").set_value(7).run()
    at.slider(key="attn_img_layer").set_value(1).run()
    at.radio(key="attn_rollout_reduce").set_value("max").run()
    at.radio(key="attn_query_kind").set_value("A patch").run()
    at.number_input(key="attn_query_row").set_value(1).run()
    assert_clean(at, "attention, patch query")
    specs = " ".join(charts(at))
    assert "validation image **7**" in " ".join(c.value for c in at.caption)
    assert "Layer 1: every head" in specs and "max over heads" in specs
    assert '"shapes"' in specs                       # the query patch is outlined
    # statistics: entropy, distance, and the mean attention distance against depth
    at.slider(key="stats_n").set_value(40).run()
    at.button(key="stats_go").click().run()
    assert_clean(at, "statistics")
    specs = " ".join(charts(at))
    assert "mean attention distance (pixels)" in specs


def _png(array) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def test_an_uploaded_image_is_looked_at_and_a_bad_file_gets_a_clear_error(vit_folder):
    at = page(vision_app(vit_folder), "2_Attention")
    at.radio(key="attn_img_from").set_value("Upload an image").run()
    assert_clean(at, "upload, nothing yet")
    colour = np.zeros((56, 40, 3), np.uint8)
    colour[10:40, 12:30] = (250, 120, 0)
    at.file_uploader(key="attn_img_upload").set_value(("my digit.png", _png(colour), "image/png")).run()
    assert_clean(at, "uploaded image")
    assert "uploaded **my digit.png** (40 x 56 px)" in " ".join(c.value for c in at.caption)
    assert any("Attention rollout" in s for s in charts(at))
    at.file_uploader(key="attn_img_upload").set_value(("broken.png", b"not an image", "image/png")).run()
    assert not at.exception
    assert "Cannot read the uploaded file as an image" in errors(at)


def test_model_and_data_offers_image_datasets_and_keeps_an_uploaded_zips_name(vit_folder, tmp_path):
    at = page(vision_app(vit_folder), "1_Model_and_data")
    assert_clean(at, "model & data")
    box = at.selectbox(key="dataset_choice_image")
    assert box.value == "mnist" and box.options[0].startswith("mnist: MNIST handwritten digits")
    assert box.options[1].startswith("mnist_shifted: ") and "Upload a zip of class folders" in box.options
    assert "rotten_tomatoes" not in " ".join(box.options)
    assert "reads images" in " ".join(c.value for c in at.caption)
    assert at.get("image"), "a few example images are shown"
    assert any("Default vision model (MNIST ViT)" in o for o in at.radio(key="model_kind").options)
    # a zip of class folders, uploaded
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for label in ("3", "7"):
            for i in range(12):
                z.writestr(f"digits/{label}/{i}.png", _png(rng.integers(0, 255, (28, 28), dtype=np.uint8)))
    box.set_value("Upload a zip of class folders").run()
    at.file_uploader(key="upload_zip").set_value(("my digits.zip", buf.getvalue(), "application/zip")).run()
    at.button(key="load_data").click().run()
    assert_clean(at, "zip upload")
    assert at.session_state["dataset"].endswith(".zip")
    assert "my digits.zip" in " ".join(s.value for s in at.success)
    assert "`my digits.zip`" in " ".join(m.value for m in at.sidebar.markdown)
    for name in ("2_Attention", "3_Heads"):
        page(at, name)
        assert_clean(at, f"{name} on the zip")


def test_a_text_model_with_image_data_and_the_other_way_round_say_what_to_do(vit_folder, tmp_path):
    from axlab.core.testing import save_tiny
    text_folder = str(save_tiny(tmp_path / "bert", "bert"))
    # a text model with image data: every page says what is wrong and how to fix it
    at = new_app(text_folder, dataset="mnist")
    for name in ("2_Attention", "3_Heads"):
        page(at, name)
        assert not at.exception
        assert "reads text, but the current data hold images" in errors(at), errors(at)
    page(at, "1_Model_and_data")
    assert not at.exception
    assert "reads text, but the current data hold images" in errors(at)
    # loading an image model while the data are texts switches the data to mnist and says so
    at = page(new_app(text_folder), "1_Model_and_data")
    at.radio(key="model_kind").set_value("Local folder").run()
    at.text_input(key="model_folder").input(vit_folder).run()
    at.button(key="load_model").click().run()
    assert_clean(at, "image model loaded over text data")
    assert at.session_state["dataset"] == "mnist"
    assert "so the data switched from `rotten_tomatoes` to `mnist`" in " ".join(s.value for s in at.success)
    # a text CSV given to an image model
    csv = tmp_path / "texts.csv"
    csv.write_text("text,label\n" + "\n".join(f"line {i},{i % 2}" for i in range(30)))
    at.selectbox(key="dataset_choice_image").set_value("A folder, zip or CSV of images on this machine").run()
    at.text_input(key="image_path").input(str(csv)).run()
    at.button(key="load_data").click().run()
    assert not at.exception
    assert "reads images, but the current data hold texts" in errors(at), errors(at)


def test_heads_prune_quantize_and_compare_work_on_images(vit_folder):
    at = page(vision_app(vit_folder), "3_Heads")
    assert "Validation images" in at.slider(key="imp_n").label
    at.slider(key="imp_n").set_value(100).run()
    at.button(key="imp_go").click().run()
    assert_clean(at, "importance on images")
    assert at.get("plotly_chart") and at.dataframe

    page(at, "4_Prune")
    at.multiselect(key="hand_heads").set_value(["L0.H1", "L1.H2"]).run()
    at.button(key="hand_go").click().run()
    assert_clean(at, "prune by hand")
    page(at, "5_Quantize")
    assert not [c for c in at.checkbox if c.key == "quant_emb"], "no word embeddings on an image model"
    at.button(key="quant_go").click().run()
    assert_clean(at, "int8")
    variants = {v.name: v for v in _variants(at)}
    assert {"base", "hand-2-heads", "int8"} <= set(variants), set(variants)
    for v in variants.values():
        assert v.measurements["n"] == 50 and 0.0 <= v.measurements["accuracy"] <= 1.0
    assert variants["hand-2-heads"].measurements["params"] < variants["base"].measurements["params"]

    page(at, "6_Compare")
    assert_clean(at, "compare")
    assert len(at.dataframe[0].value) == 3
    at.selectbox(key="cmp_a").set_value("base").run()
    at.selectbox(key="cmp_b").set_value("hand-2-heads").run()
    assert not at.main.text_input, "an image model gets an image picker, not a text box"
    assert sum("Attention rollout into [CLS]" in s for s in charts(at)) == 2
    at.button(key="cmp_explain").click().run()
    assert_clean(at, "explain both")
    pix = [s for s in charts(at) if "toward" in s and "base: p(" in s]
    assert pix and "hand-2-heads: p(" in pix[0] and "integrated_gradients" in pix[0]
    # an int8 variant has no gradients: auto explains it by occlusion
    at.selectbox(key="cmp_b").set_value("int8").run()
    at.button(key="cmp_explain").click().run()
    assert_clean(at, "explain int8")
    assert any("int8: p(" in s and "occlusion" in s for s in charts(at))


def test_export_page_renders_for_an_image_model(vit_folder):
    at = page(vision_app(vit_folder), "7_Export")
    assert not at.exception, [e.message for e in at.exception]


def _default_vision_built() -> bool:
    try:
        from ui.quick import describe
        return describe("default-vision") is not None
    except Exception:  # noqa: BLE001
        return False


@pytest.mark.slow
def test_every_page_renders_for_the_default_vision_model():
    if not _default_vision_built():
        pytest.skip("the default vision model is not built (axlab prepare)")
    at = new_app("default-vision", dataset="mnist", measure_n=50, latency_runs=5)
    assert_clean(at, "home")
    assert "reads images" in " ".join(m.value for m in at.sidebar.markdown)
    for name in PAGES + ["7_Export"]:
        page(at, name)
        assert_clean(at, name)
    page(at, "2_Attention")
    assert any("Attention rollout into [CLS]" in s for s in charts(at))
    caption = " ".join(c.value for c in at.caption)
    assert "labelled **3**" in caption and "The model predicts **3**" in caption, caption   # validation digit 0 is a 3


def test_an_image_folder_on_this_machine_is_used_and_a_wrong_path_says_so(vit_folder, tmp_path):
    from PIL import Image
    rng = np.random.default_rng(1)
    for label in ("3", "7"):
        (tmp_path / "digits" / label).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)).save(tmp_path / "digits" / label / f"{i}.png")
    at = page(vision_app(vit_folder), "1_Model_and_data")
    at.selectbox(key="dataset_choice_image").set_value("A folder, zip or CSV of images on this machine").run()
    at.text_input(key="image_path").input(str(tmp_path / "nowhere")).run()
    at.button(key="load_data").click().run()
    assert not at.exception
    assert "does not exist on the machine that runs the workbench" in errors(at)
    at.text_input(key="image_path").input(str(tmp_path / "digits")).run()
    at.button(key="load_data").click().run()
    assert_clean(at, "image folder")
    assert at.session_state["dataset"] == str(tmp_path / "digits")
    assert "2 labels (3, 7)" in " ".join(s.value for s in at.success)
