"""int8 dynamic, k-bit RTN, quantized modules, layouts and state-dict round trips (tiny models)."""
import copy

import pytest
import torch
from axlab.compress import Step, apply_recipe
from axlab.compress import quantize as Q
from axlab.compress.gpfq import gpfq
from axlab.core import qmodules as qm
from axlab.core import registry, surgery
from axlab.core.errors import AxlabError
from axlab.core.measure import size_report
from axlab.core.testing import tiny_model
from safetensors.torch import load_file, save_file
from torch import nn


def _out(model, batch):
    with torch.no_grad():
        o = model(**batch, output_hidden_states=True)
    return o.logits, o.hidden_states[-1]


def _rel(a, b):
    return float((a - b).detach().norm() / b.detach().norm())


@pytest.mark.parametrize("method", ["int8", "int8_emb", "rtn8", "rtn8_group"])
def test_8bit_close_to_fp32(tiny, batch, method):
    make = {"int8": lambda m: Q.int8_dynamic(m), "int8_emb": lambda m: Q.int8_dynamic(m, embeddings=True),
            "rtn8": lambda m: Q.rtn(m, 8), "rtn8_group": lambda m: Q.rtn(m, 8, group_size=16, embeddings=True)}[method]
    q = make(tiny)
    assert Q.is_quantized(q)
    lg, hid = _out(tiny, batch)
    qlg, qhid = _out(q, batch)
    assert _rel(qhid, hid) < 0.01
    if method.startswith("rtn"):
        assert _rel(qlg, lg) < 0.03          # tiny random logits are ~1e-2: a small relative budget
    # fewer bits must be worse: the comparison can fail
    assert _rel(_out(Q.rtn(tiny, 2), batch)[1], hid) > _rel(qhid, hid)


def test_transforms_do_not_mutate_input(tokenizer, split):
    m = tiny_model("bert")
    before = {k: v.clone() for k, v in m.state_dict().items()}
    types = [type(x) for x in m.modules()]
    Q.int8_dynamic(m, embeddings=True)
    Q.rtn(m, 3, embeddings=True)
    gpfq(m, tokenizer, split.texts[:8], 3, embeddings=True, progress=False)
    assert [type(x) for x in m.modules()] == types
    after = m.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_codes_match_rounding_rule():
    w = torch.randn(6, 32)
    codes, scale = qm.quantize_codes(w, 4, group_size=8)                     # (6, 32), (6, 4)
    assert scale.shape == (6, 4) and codes.min() >= -8 and codes.max() <= 7
    expect = (2 * w.reshape(6, 4, 8).abs().amax(-1) / 15)
    assert torch.allclose(scale, expect)
    deq = qm.dequantize_codes(codes, scale)
    assert (deq - w).abs().max() <= scale.max() / 2 + 1e-6 + scale.max()   # clamped ends lose at most one step
    _, s2 = qm.quantize_codes(w, 3, scale_search=True)
    err_max = (qm.dequantize_codes(*qm.quantize_codes(w, 3)) - w).pow(2).sum()
    err_srch = (qm.dequantize_codes(*qm.quantize_codes(w, 3, scale_search=True)) - w).pow(2).sum()
    assert err_srch <= err_max


def test_quant_linear_stores_packed_ints():
    lin = nn.Linear(40, 12)
    codes, scale = qm.quantize_codes(lin.weight, 3)
    ql = Q.QuantLinear.from_codes(codes, scale, lin.bias, 3)
    sd = ql.state_dict()
    assert set(sd) == {"packed", "scale", "bias"}
    assert sd["packed"].dtype == torch.uint8 and sd["packed"].numel() == (40 * 12 * 3 + 7) // 8
    assert torch.equal(ql.codes(), codes)
    x = torch.randn(5, 40)
    assert torch.allclose(ql(x), nn.functional.linear(x, qm.dequantize_codes(codes, scale), lin.bias))


def test_int8_linear_matches_its_dequantized_weight():
    lin = nn.Linear(64, 32)
    il = Q.Int8Linear.from_linear(lin)
    assert il.state_dict()["weight_int8"].dtype == torch.int8
    x = torch.randn(2, 7, 64)
    ref = nn.functional.linear(x, il.weight, il.bias)
    y = il(x)
    assert y.shape == (2, 7, 32)
    assert _rel(y, ref) < 0.02            # activations are quantized on the fly too
    assert _rel(y, lin(x)) < 0.03


def test_size_counts_packed_bits(tiny):
    names = Q.target_linears(tiny)
    n_w = sum(tiny.get_submodule(n).weight.numel() for n in names)
    full = size_report(tiny)["size_bytes"]
    for bits in (2, 4, 8):
        q = Q.rtn(tiny, bits)
        saved = full - size_report(q)["size_bytes"]
        scales = sum(tiny.get_submodule(n).out_features for n in names) * 4
        expect = n_w * 4 - sum((tiny.get_submodule(n).weight.numel() * bits + 7) // 8 for n in names) - scales
        assert abs(saved - expect) < 4096             # safetensors header differences only
    emb = registry.word_embeddings(tiny).weight.numel()
    saved_emb = full - size_report(Q.int8_dynamic(tiny, embeddings=True, scope="encoder"))["size_bytes"]
    assert saved_emb > 0.7 * (n_w * 3 + emb * 3)


def _pruned(arch):
    m = tiny_model(arch)
    surgery.remove_heads_(m, 0, [0, 2])
    surgery.remove_heads_(m, 1, [0, 1, 2, 3])          # a layer with no heads left
    surgery.remove_ffn_neurons_(m, 0, list(range(0, 128, 3)))
    surgery.remove_ffn_neurons_(m, 1, list(range(128)))  # zero-width FFN
    return m


@pytest.mark.parametrize("method", ["int8", "rtn", "gpfq", "gpfq_outliers", "rtn_packed"])
def test_state_dict_round_trip_through_safetensors(arch, tokenizer, split, batch, tmp_path, method):
    base = _pruned(arch)
    if method == "rtn_packed":                                 # int8 head, 4-bit word table, 8-bit positions
        q = Q.quantize_rest(Q.rtn(base, 4), embedding_bits=4)
    elif method == "int8":
        q = Q.int8_dynamic(base, embeddings=True)
    elif method == "rtn":
        q = Q.rtn(base, 3, group_size=16, embeddings=True, embedding_bits=4)
        Q.quantize_embeddings_(q, 4, position_bits=8)          # the position table too
        assert isinstance(q.get_submodule(Q.position_embedding_name(q)), Q.QuantEmbedding)
    elif method == "gpfq":
        q = gpfq(base, tokenizer, split.texts[:12], 3, group_size=16, progress=False)
    else:
        q = gpfq(base, tokenizer, split.texts[:12], 3, outliers=0.01, refine_passes=1, progress=False)
        assert all(q.get_submodule(n).n_outliers > 0 for n in Q.target_linears(q))
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in q.state_dict().items()}, str(path))
    lay, qlay = surgery.layout(q), Q.quant_layout(q)
    import json
    qlay = json.loads(json.dumps(qlay))                     # JSON-serialisable
    fresh = tiny_model(arch, seed=1)                        # different weights: loading must overwrite all
    surgery.apply_layout(fresh, lay)
    Q.apply_quant_layout(fresh, qlay)
    fresh.load_state_dict(load_file(str(path)), strict=True)
    fresh.eval()
    a, _ = _out(q, batch)
    b, _ = _out(fresh, batch)
    assert torch.equal(a, b)
    assert size_report(fresh)["size_bytes"] == size_report(q)["size_bytes"]


def test_outliers_are_kept_exact_and_counted_in_the_size(tiny):
    """Dense-and-sparse RTN: a planted huge weight is stored exactly and no longer sets its
    row's step, so the rest of the row keeps its precision."""
    m = copy.deepcopy(tiny)
    name = Q.target_linears(m)[0]
    lin = m.get_submodule(name)
    with torch.no_grad():
        lin.weight[3, 5] = 40 * float(lin.weight.abs().max())
    mask = qm.outlier_mask(lin.weight, 0.001)
    assert bool(mask[3, 5])
    plain, dense_sparse = Q.rtn(m, 3), Q.rtn(m, 3, outliers=0.001)
    ql = dense_sparse.get_submodule(name)
    k = ql.n_outliers
    assert k == mask.sum() and ql.outlier_value.dtype == torch.float16
    assert float(ql.weight[3, 5]) == float(lin.weight.detach()[3, 5].half())
    assert int(ql.codes()[3, 5]) == 0
    row_err = lambda q: float((q.get_submodule(name).weight[3] - lin.weight[3]).abs()[torch.arange(lin.in_features) != 5].max())
    assert row_err(dense_sparse) < 0.2 * row_err(plain)
    n_layers = len(Q.target_linears(m))
    extra = size_report(dense_sparse)["size_bytes"] - size_report(plain)["size_bytes"]
    n_out = sum(dense_sparse.get_submodule(n).n_outliers for n in Q.target_linears(m))
    assert n_out * 6 <= extra <= n_out * 6 + 600 * n_layers          # int32 index + fp16 value (+ headers)
    with pytest.raises(AxlabError):
        qm.outlier_mask(lin.weight, 0.5)
    with pytest.raises(ValueError):                                  # codes must be 0 where the outliers sit
        Q.QuantLinear.from_codes(torch.ones(2, 4, dtype=torch.int8), torch.ones(2, 1), None, 3,
                                 outliers=(torch.tensor([1]), torch.tensor([2.0])))


def test_apply_quant_layout_rejects_unknown_module():
    m = tiny_model("bert")
    with pytest.raises(AxlabError):
        Q.apply_quant_layout(m, {"modules": {"bert.nope": {"kind": "int8_linear", "in_features": 1,
                                                             "out_features": 1, "bias": True}}})
    with pytest.raises(AxlabError):
        Q.apply_quant_layout(m, {"layers": []})


def test_bad_bits_and_group_size_raise():
    m = tiny_model("bert")
    for bits in (1, 9, 3.5, True):
        with pytest.raises(AxlabError, match="bits"):
            Q.rtn(m, bits)
    with pytest.raises(AxlabError, match="group_size"):
        Q.rtn(m, 4, group_size=0)


def test_group_size_falls_back_per_channel_on_odd_widths():
    m = tiny_model("bert")
    surgery.remove_ffn_neurons_(m, 0, [0, 1, 2])            # FFN down now has 125 inputs
    q = Q.rtn(m, 4, group_size=16)
    down = registry.ffn_parts(q, 0).down
    up = registry.ffn_parts(q, 0).up
    assert down.group_size is None and up.group_size == 16


def test_recipe_ops(tokenizer, split, batch):
    from axlab.core.data import Split, Splits
    m = tiny_model("bert")
    splits = Splits(name="tiny", label_names=["a", "b"], train=split, validation=split, test=split, seed=0,
                    file_hash="x", source_file="x")
    r = apply_recipe(m, [Step("quantize_rtn", bits=4, group_size=16)])
    assert torch.equal(_out(r, batch)[0], _out(Q.rtn(m, 4, group_size=16), batch)[0])
    i8 = apply_recipe(m, [Step("quantize_int8", embeddings=True)])
    assert isinstance(registry.word_embeddings(i8), Q.QuantEmbedding)
    g1 = apply_recipe(m, [Step("quantize_gpfq", bits=3, n_calibration=16)], tokenizer=tokenizer, splits=splits)
    g2 = apply_recipe(m, [Step("quantize_gpfq", bits=3, n_calibration=16)], tokenizer=tokenizer, splits=splits)
    assert torch.equal(_out(g1, batch)[0], _out(g2, batch)[0])      # replay is deterministic
    with pytest.raises(AxlabError):
        apply_recipe(m, [Step("quantize_gpfq", bits=3)], tokenizer=tokenizer)   # no calibration data
    # prune, then quantize
    pq = apply_recipe(m, [Step("quantize_rtn", bits=4)])
    assert Q.quant_layout(pq)["modules"]
    assert Split  # imported for the type


def test_error_figure_has_one_trace_per_method(tokenizer, split):
    m = tiny_model("bert")
    errs = Q.layer_errors(m, {"rtn 3": Q.rtn(m, 3), "rtn 8": Q.rtn(m, 8)}, tokenizer, split.texts[:8])
    assert set(errs) == {"rtn 3", "rtn 8"}
    assert all(errs["rtn 8"][n] < errs["rtn 3"][n] for n in Q.target_linears(m))
    fig = Q.error_figure(errs)
    assert len(fig.data) == 2 and len(fig.data[0].x) == len(errs["rtn 3"])
    assert copy.deepcopy(fig) is not None


def test_cli_quantize_json(tmp_path, capsys):
    import json

    from axlab.cli import main
    from axlab.core.testing import save_tiny
    folder = save_tiny(tmp_path / "tiny")
    rc = main(["quantize", str(folder), "--method", "rtn", "--bits", "3", "--limit", "16", "--no-latency", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["method"] == "rtn" and out["bits"] == 3 and out["recipe"][0]["op"] == "quantize_rtn"
    assert out["size_bytes"] < size_report(tiny_model("bert"))["size_bytes"]
    assert main(["quantize", str(folder), "--method", "rtn", "--bits", "9", "--limit", "4", "--no-latency"]) == 2
    assert main(["quantize", str(folder), "--method", "rtn", "--bits", "3", "--limit", "16", "--no-latency", "--json",
                 "--pack-rest", "4"]) == 0
    packed = json.loads(capsys.readouterr().out)
    assert [s["op"] for s in packed["recipe"]] == ["quantize_rtn", "quantize_rest"]
    assert packed["recipe"][1]["params"] == {"embedding_bits": 4, "position_bits": 8}
    assert packed["size_bytes"] < out["size_bytes"]


def test_int8_state_dict_stays_plain_after_forward(tiny, batch):
    q = Q.int8_dynamic(tiny)
    before = q.state_dict()
    _out(q, batch)                       # builds the packed int8 kernels
    after = q.state_dict()
    assert list(after) == list(before)
    assert all(isinstance(t, torch.Tensor) for t in after.values())


@pytest.mark.parametrize("method", ["rtn4_emb", "int8_emb"])
def test_quantized_embeddings_keep_vocabulary_remap(tokenizer, split, tmp_path, method):
    from axlab.compress.prune import prune_vocab
    base = tiny_model("bert")
    pruned, report = prune_vocab(base, tokenizer, split.texts)
    assert report["oov_rate"] >= 0
    q = Q.rtn(pruned, 4, embeddings=True) if method == "rtn4_emb" else Q.int8_dynamic(pruned, embeddings=True)
    # words outside the kept vocabulary must still map (to [UNK]), not index out of range
    batch = dict(tokenizer(["zebra quantum xylophone", split.texts[0]], padding=True, return_tensors="pt"))
    ref_pruned = _out(pruned, batch)[0]
    got = _out(q, batch)[0]
    assert _rel(got, ref_pruned) < 0.1
    save_file(q.state_dict(), tmp_path / "w.safetensors")
    fresh = tiny_model("bert", seed=3)
    surgery.apply_layout(fresh, surgery.layout(q))
    Q.apply_quant_layout(fresh, Q.quant_layout(q))
    fresh.load_state_dict(load_file(tmp_path / "w.safetensors"), strict=True)
    torch.testing.assert_close(_out(fresh, batch)[0], got, atol=1e-6, rtol=0)


def test_quantize_rest_packs_what_the_weight_quantizer_left(arch, tokenizer, split, batch):
    from axlab.core.data import Splits
    m = tiny_model(arch)
    q = Q.rtn(m, 4)                                            # the encoder only: head and tables stay fp32
    before = {k: v.clone() for k, v in q.state_dict().items()}
    packed = Q.quantize_rest(q, embedding_bits=4, position_bits=8)
    assert all(torch.equal(before[k], v) for k, v in q.state_dict().items())          # the input is untouched
    assert not [n for n, mod in packed.named_modules() if isinstance(mod, nn.Linear) and mod.weight.numel()]
    assert any(isinstance(mod, Q.Int8Linear) for mod in packed.modules())
    for name, mod in q.named_modules():                      # the encoder's codes are not re-rounded
        if isinstance(mod, Q.QuantLinear):
            assert torch.equal(packed.get_submodule(name).codes(), mod.codes())
    word, pos = registry.word_embeddings(packed), Q.position_embedding_name(packed)
    assert isinstance(word, Q.QuantEmbedding) and word.bits == 4
    assert isinstance(packed.get_submodule(pos), Q.QuantEmbedding) and packed.get_submodule(pos).bits == 8
    assert size_report(packed)["size_bytes"] < 0.8 * size_report(q)["size_bytes"]
    a, b = _out(q, batch)[0], _out(packed, batch)[0]
    assert 0 < float((a - b).abs().max()) < 0.2 * float(a.abs().max()) + 0.05           # changed, but close
    # a recipe step; replay equals the direct call
    splits = Splits(name="tiny", label_names=["a", "b"], train=split, validation=split, test=split, seed=0,
                    file_hash="x", source_file="x")
    r = apply_recipe(m, [Step("quantize_rtn", bits=4), Step("quantize_rest", embedding_bits=4)], tokenizer=tokenizer,
                     splits=splits)
    assert torch.equal(_out(r, batch)[0], b)
    from axlab.core.recipe import describe_step
    assert describe_step(Step("quantize_rest", embedding_bits=4)) == \
        "pack the rest: int8 for the remaining fp32 layers, 4-bit word table, 8-bit position table"
    # a word table quantized already keeps its codes; nothing asked, nothing changed
    e8 = Q.rtn(m, 4, embeddings=True, embedding_bits=8)
    assert registry.word_embeddings(Q.quantize_rest(e8, embedding_bits=4)).bits == 8
    same = Q.quantize_rest(q, embedding_bits=None, position_bits=None, linears=False)
    assert torch.equal(_out(same, batch)[0], a)
