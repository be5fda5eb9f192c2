"""GPTQ (Frantar et al. 2022): the reference peer of GPFQ, on tiny random models (seconds)."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from axlab.compress import Step, apply_recipe
from axlab.compress import quantize as Q
from axlab.compress.gpfq import gpfq
from axlab.compress.gptq import GPTQConfig, gptq, gptq_rows
from axlab.core import surgery
from axlab.core.data import Splits
from axlab.core.errors import AxlabError
from axlab.core.measure import size_report
from axlab.core.packing import code_range
from axlab.core.qmodules import QuantLinear, quantize_codes
from axlab.core.recipe import describe_recipe
from axlab.core.testing import tiny_model


def _obs_reference(W, H, step, lo, hi, damp):
    """The paper's update written plainly (eq. 3-4, no Cholesky, no blocks): quantize column t,
    spread its error with the inverse Hessian, then remove t from the inverse Hessian."""
    W = W.clone().double()
    n = W.shape[1]
    Hd = H.double() + damp * float(torch.diagonal(H).mean()) * torch.eye(n, dtype=torch.float64)
    Hinv = torch.linalg.inv(Hd)
    codes = torch.zeros_like(W)
    for t in range(n):
        c = torch.clamp(torch.round(W[:, t] / step[:, 0]), lo, hi)
        codes[:, t] = c
        err = (W[:, t] - c * step[:, 0]) / Hinv[t, t]
        W[:, t + 1:] -= err.unsqueeze(1) * Hinv[t, t + 1:].unsqueeze(0)
        Hinv = Hinv - Hinv[:, t:t + 1] @ Hinv[t:t + 1, :] / Hinv[t, t]
    return codes


def _case(seed=0, n_tok=200, n_in=24, n_out=7, bits=3):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(n_in, n_in, generator=g) * 0.4 + torch.eye(n_in)      # correlated inputs
    X = torch.randn(n_tok, n_in, generator=g, dtype=torch.float32) @ mix
    W = torch.randn(n_out, n_in, generator=g)
    _, scale = quantize_codes(W, bits)
    return W.double(), X.double(), scale.double()


@pytest.mark.parametrize("block_size", [1, 5, 128])
def test_blocked_cholesky_gptq_equals_the_plain_obs_update(block_size):
    W, X, scale = _case()
    lo, hi = code_range(3)
    H = 2 * X.T @ X
    ref = _obs_reference(W, H, scale, lo, hi, 0.01)
    codes, exact = gptq_rows(W, H, scale, lo, hi, damp=0.01, block_size=block_size, dtype=torch.float64)
    assert torch.equal(codes, ref)
    assert not exact.any()


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_gptq_beats_rounding_on_its_objective_and_stays_on_the_grid(bits):
    W, X, scale = _case(seed=1, bits=bits)
    lo, hi = code_range(bits)
    H = 2 * X.T @ X
    codes, _ = gptq_rows(W, H, scale, lo, hi)
    assert codes.min() >= lo and codes.max() <= hi and torch.equal(codes, codes.round())
    rtn = torch.clamp(torch.round(W / scale), lo, hi)
    err_gptq = float(((X @ (W - codes * scale).T) ** 2).sum())
    err_rtn = float(((X @ (W - rtn * scale).T) ** 2).sum())
    assert err_gptq < err_rtn


def test_act_order_and_outliers():
    W, X, scale = _case(seed=3)
    lo, hi = code_range(3)
    H = 2 * X.T @ X
    order = torch.argsort(torch.diagonal(H), descending=True)
    codes, _ = gptq_rows(W, H, scale, lo, hi, order=order, dtype=torch.float64)
    # walking a permutation is GPTQ on permuted columns, returned in the natural order
    perm, _ = gptq_rows(W[:, order], H[order][:, order], scale, lo, hi, dtype=torch.float64)
    assert torch.equal(codes[:, order], perm)
    fixed = torch.zeros_like(W, dtype=torch.bool)
    fixed[0, 3] = fixed[4, 10] = True
    c2, exact = gptq_rows(W, H, scale, lo, hi, fixed=fixed, dtype=torch.float64)
    assert c2[fixed].eq(0).all() and exact[~fixed].eq(0).all() and exact[fixed].ne(0).all()


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_gptq_model_layers_beat_rtn_on_calibration_inputs(arch, tokenizer, split, bits):
    m = tiny_model(arch)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    q = gptq(m, tokenizer, split.texts, bits, progress=False)
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())     # input untouched
    rows = q.axlab_gptq_report.layers
    assert {r["name"] for r in rows} == set(Q.target_linears(m))
    lo, hi = code_range(bits)
    for r in rows:
        lin = q.get_submodule(r["name"])
        assert isinstance(lin, QuantLinear) and lin.bits == bits and lin.method == "gptq"
        c = lin.codes()
        assert int(c.min()) >= lo and int(c.max()) <= hi
        # the same scales as round-to-nearest (same grid and granularity as GPFQ's base scale)
        _, s = quantize_codes(m.get_submodule(r["name"]).weight, bits)
        assert torch.allclose(lin.scale, s)
        if bits == 3:                          # GPTQ's own objective: ||X~ (W - Q)^T|| on the calibration inputs
            assert r["own_rel_error"] <= r["rtn_own_rel_error"] + 1e-9, r["name"]
    assert sum(r["own_rel_error"] for r in rows) < sum(r["rtn_own_rel_error"] for r in rows)


def test_gptq_output_error_below_rtn_like_gpfq(tokenizer, split):
    m = tiny_model("bert")
    q = gptq(m, tokenizer, split.texts, 3, progress=False)
    errs = Q.layer_errors(m, {"rtn": Q.rtn(m, 3), "gptq": q}, tokenizer, split.texts, names=Q.target_linears(m))
    assert sum(errs["gptq"].values()) < sum(errs["rtn"].values())


def test_saved_gptq_variant_reloads_with_identical_logits(tokenizer, split, batch, tmp_path):
    base = tiny_model("bert")
    surgery.remove_heads_(base, 0, [1])
    surgery.remove_ffn_neurons_(base, 1, list(range(0, 128, 2)))
    q = gptq(base, tokenizer, split.texts[:12], 3, group_size=16, outliers=0.01, progress=False)
    assert all(q.get_submodule(n).n_outliers > 0 for n in Q.target_linears(q))
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in q.state_dict().items()}, str(path))
    lay, qlay = surgery.layout(q), json.loads(json.dumps(Q.quant_layout(q)))
    fresh = tiny_model("bert", seed=1)
    surgery.apply_layout(fresh, lay)
    Q.apply_quant_layout(fresh, qlay)
    fresh.load_state_dict(load_file(str(path)), strict=True)
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(q(**batch).logits, fresh(**batch).logits)
    assert size_report(fresh)["size_bytes"] == size_report(q)["size_bytes"]


def test_recipe_op_replays_and_reads_in_words(tokenizer, split, batch):
    m = tiny_model("bert")
    splits = Splits(name="tiny", label_names=["a", "b"], train=split, validation=split, test=split, seed=0,
                    file_hash="x", source_file="x")
    step = Step("quantize_gptq", bits=3, n_calibration=16, seed=2)
    a = apply_recipe(m, [step], tokenizer=tokenizer, splits=splits)
    b = apply_recipe(m, [step], tokenizer=tokenizer, splits=splits)
    direct = gptq(m, tokenizer, Q.calibration_texts(splits, 16, seed=2), 3, progress=False)
    with torch.no_grad():
        la, lb, ld = (x(**batch).logits for x in (a, b, direct))
    assert torch.equal(la, lb) and torch.equal(la, ld)
    with pytest.raises(AxlabError):
        apply_recipe(m, [Step("quantize_gptq", bits=3)], tokenizer=tokenizer)       # no calibration data
    assert describe_recipe([Step("quantize_gptq", bits=2, group_size=32)]) == "GPTQ 2-bit weights, groups of 32"


def test_same_calibration_and_grid_as_gpfq(tokenizer, split):
    m = tiny_model("bert")
    g = gpfq(m, tokenizer, split.texts, 3, scale_grid=None, refine_passes=0, outliers=0.0, progress=False)
    t = gptq(m, tokenizer, split.texts, 3, progress=False)
    assert g.axlab_gpfq_report.n_tokens == t.axlab_gptq_report.n_tokens
    for n in Q.target_linears(m):
        assert torch.equal(g.get_submodule(n).scale, t.get_submodule(n).scale)


def test_config_validates():
    with pytest.raises(AxlabError):
        GPTQConfig(bits=1)
    with pytest.raises(ValueError):
        GPTQConfig(damp=-1)
    with pytest.raises(ValueError):
        GPTQConfig(outliers=0.5)
    with pytest.raises(AxlabError):
        gptq(tiny_model("bert"), None, [], 3)
