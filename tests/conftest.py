"""Shared fixtures. Tests use a scratch variant store (AXLAB_DATA) and the cached default model."""
import os
import tempfile

os.environ.setdefault("AXLAB_DATA", tempfile.mkdtemp(prefix="axlab-test-data-"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
from axlab.core.testing import ARCHS, tiny_model, tiny_split, tiny_tokenizer  # noqa: E402


@pytest.fixture
def one_thread():
    """Run torch on one thread: fastest for tiny models, and robust when the cores are shared."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(params=ARCHS)
def arch(request):
    return request.param


@pytest.fixture
def tiny(arch):
    return tiny_model(arch)


@pytest.fixture(scope="session")
def split():
    return tiny_split(24)


@pytest.fixture
def batch(tokenizer, split):
    return dict(tokenizer(split.texts[:6], padding=True, return_tensors="pt"))


@pytest.fixture(scope="session")
def default_bundle():
    """The real default model (built once by `axlab prepare`, cached)."""
    from axlab.core.loading import load_model
    from axlab.core.train import prepare
    prepare()
    return load_model("default")


@pytest.fixture(scope="session")
def default_vision_bundle():
    """The real default vision model (the MNIST ViT, built once by `axlab prepare`, cached)."""
    from axlab.core.loading import load_model
    from axlab.core.train_vision import prepare_vision
    prepare_vision()
    return load_model("default-vision")


@pytest.fixture(scope="session")
def mnist_splits():
    from axlab.core.images import load_image_dataset
    return load_image_dataset("mnist")


@pytest.fixture(scope="session")
def default_splits():
    from axlab.core.data import load_dataset
    return load_dataset("rotten_tomatoes")


def logits(model, batch, **kw):
    with torch.no_grad():
        return model(**batch, **kw).logits


def skip_if_int8_saturates(checked: str = "full-range int8 weights are checked against torch.ao"):
    """Skip where ONNX Runtime's int8 kernel clips full-range int8 weights (x86 CPUs without AVX-VNNI:
    :func:`axlab.deploy.fused_onnx.int8_kernel_saturates`): its logits are legitimately further off there."""
    from axlab.deploy.fused_onnx import int8_kernel_saturates
    if int8_kernel_saturates():
        pytest.skip(f"ONNX Runtime's int8 kernel saturates on this CPU (no AVX-VNNI); {checked} on VNNI CPUs")
