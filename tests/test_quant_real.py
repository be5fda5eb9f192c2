"""Quantization claims on the real default model (MiniLM-L6, Rotten Tomatoes), kept small:
GPFQ at 3 bits follows fp32 more closely than round-to-nearest, and keeping the few
outlier weights exact helps it further. Full figures: bench/bench_quant.py."""
import pytest
from axlab.compress import quantize as Q
from axlab.compress.gpfq import gpfq
from axlab.core import qmodules as qm
from axlab.core import registry
from axlab.core.measure import fidelity, predict_logits

pytestmark = pytest.mark.usefixtures("one_thread")


def test_real_massive_activation_weight_is_an_outlier(default_bundle):
    """Layer 0's FFN down-projection has one weight hundreds of times its row's typical size
    (it feeds a massive activation); the outlier selection keeps it exact."""
    w = registry.ffn_parts(default_bundle.model, 0).down.weight.detach()
    ratio = w.abs().amax(1) / w.abs().mean(1)
    row = int(ratio.argmax())
    assert float(ratio[row]) > 100
    mask = qm.outlier_mask(w, 0.001)
    assert bool(mask[row, int(w[row].abs().argmax())])


def test_real_gpfq_3bit_closer_to_fp32_than_rtn(default_bundle, default_splits):
    model, tok = default_bundle.model, default_bundle.tokenizer
    val = default_splits.validation.head(300)
    calib = Q.calibration_texts(default_splits, 128)
    ref = predict_logits(model, tok, val.texts)

    def closeness(m):
        return fidelity(predict_logits(m, tok, val.texts), ref)

    rtn = closeness(Q.rtn(model, 3))
    no_outliers = closeness(gpfq(model, tok, calib, 3, outliers=0.0, progress=False))
    default = closeness(gpfq(model, tok, calib, 3, progress=False))
    # measured: KL 0.037 (default) vs 0.122 (no outliers) vs 0.121 (RTN); with only 128
    # calibration reviews GPFQ without outliers is no closer than RTN: the row of the
    # massive-activation weight dominates the error
    assert default["kl"] < 0.5 * rtn["kl"]
    assert default["kl"] < 0.5 * no_outliers["kl"]
    assert default["agreement"] > rtn["agreement"]
