"""Parity of the fused ONNX export against PyTorch on tiny random models (seconds)."""
import pytest
import torch
from axlab.compress.prune import drop_layers, prune_ffn, prune_heads, prune_vocab
from axlab.compress.quantize import int8_dynamic, rtn
from axlab.core.errors import ExportError
from axlab.core.testing import ARCHS, tiny_model, tiny_tokenizer
from axlab.deploy.fused_onnx import (
    FusedConfig,
    build_fused_graph,
    export_fused_onnx,
    fused_predictor,
    int8_twin,
    op_histogram,
    pack_nbits,
)
from axlab.deploy.onnx_export import check_parity, parity_batches
from conftest import skip_if_int8_saturates

UNEVEN = {0: [1, 2], 1: [0, 1, 2, 3], 2: [3]}          # 2, 0 and 3 heads left of 4
NBITS = FusedConfig(lowbit_kernel="nbits")             # k-bit codes in MatMulNBits (fp32 compute: exact)


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def batches(tok):
    return parity_batches(tok)


def _sharpen(model):
    """Scale weights up so attention is far from uniform and logits are O(1) (a harder parity test)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and "embeddings" not in name:
                p.mul_(6.0)
    return model


def _pruned(arch, layers=3):
    m = _sharpen(tiny_model(arch, layers=layers))
    m = prune_heads(m, UNEVEN)
    return prune_ffn(m, {0: list(range(0, 128, 3)), 1: list(range(128))})   # 85 neurons left, then none


def _rel(model, pred, batches):
    par = check_parity(model, pred, batches)
    with torch.no_grad():
        scale = max(float(model(**b).logits.abs().max()) for b in batches)
    return max(par.values()), scale


def _ops(model, cfg=None):
    return op_histogram(build_fused_graph(model, cfg))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("attention,layernorm", [("attention", "elementwise"), ("mha", "elementwise"),
                                                 ("attention", "standard"), ("mha", "standard"),
                                                 ("attention", "fused"), ("mha", "fused")])
def test_fp32_pruned_parity(arch, attention, layernorm, batches, tok, tmp_path):
    m = _pruned(arch)
    res = export_fused_onnx(m, tok, tmp_path / "m.onnx", config=FusedConfig(attention=attention, layernorm=layernorm),
                            batches=batches)
    assert res.parity_max_abs_diff <= 1e-4
    op = "com.microsoft:Attention" if attention == "attention" else "com.microsoft:MultiHeadAttention"
    assert res.ops[op] == 2                                       # layers with 2 and 3 heads; the 0-head layer has none
    if layernorm == "fused":
        assert res.ops["com.microsoft:EmbedLayerNormalization"] == 1
        assert res.ops["com.microsoft:SkipLayerNormalization"] == 4   # 0-head attention and 0-width FFN: Add + LayerNorm
        assert res.ops["LayerNormalization"] == 2
    elif layernorm == "standard":                                 # 7 LayerNorms, each one opset-17 node
        assert res.ops["LayerNormalization"] == 7 and "ReduceMean" not in res.ops
        assert not [k for k in res.ops if k.startswith("com.microsoft:") and "LayerNormalization" in k]
    else:                                                         # 7 LayerNorms, each two ReduceMeans, no LN kernel
        assert res.ops["ReduceMean"] == 14
        assert not [k for k in res.ops if "LayerNormalization" in k]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("unpad,cls_only", [(True, True), (True, False), (False, True), (False, False)])
def test_unpadded_rows_parity(arch, unpad, cls_only, tok):
    """Packed tokens between attention blocks and a [CLS]-only last layer give the padded graph's logits,
    whatever the padding: uneven heads, a layer with no heads, one with no FFN, the last layer dropped,
    and a last layer left with neither heads nor FFN."""
    m = _pruned(arch, layers=4)
    texts = ["the film is a quiet , warm and funny story", "flat .", "", "the plot drags " * 12]
    batches = [tok(texts, padding=True, return_tensors="pt"),
               tok(texts[:2], padding="max_length", max_length=40, return_tensors="pt"),     # mostly padding
               tok(texts[1:2], return_tensors="pt")]
    cfg = FusedConfig(unpad=unpad, cls_only=cls_only)
    for model in (m, drop_layers(m, [3]), drop_layers(m, [2, 3])):
        proto = build_fused_graph(model, cfg)
        assert ("NonZero" in op_histogram(proto)) == unpad
        pred = fused_predictor(proto.SerializeToString())
        assert max(check_parity(model, pred, batches).values()) <= 1e-4
        # a row's logits do not depend on how far the batch is padded
        short, long_ = (pred(tok(texts[:2], padding=p, max_length=40, return_tensors="pt"))
                        for p in (True, "max_length"))
        assert torch.allclose(short, long_, atol=1e-5)


def test_left_padding_keeps_the_padded_layout(tok, tmp_path):
    """Unpadding assumes the first position of each row is real; a left-padding tokenizer gets the padded graph."""
    import copy
    left = copy.deepcopy(tok)
    left.padding_side = "left"
    batch = left(["the film is a quiet , warm and funny story", "flat ."], padding=True, return_tensors="pt")
    assert int(batch["attention_mask"][1, 0]) == 0
    m = _pruned("bert")
    res = export_fused_onnx(m, left, tmp_path / "m.onnx", batches=[batch])
    assert "NonZero" not in res.ops and res.parity_max_abs_diff <= 1e-4
    res = export_fused_onnx(m, tok, tmp_path / "r.onnx")
    assert "NonZero" in res.ops


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_are_not_trivial(arch, batches):
    diff, scale = _rel(_pruned(arch), fused_predictor(build_fused_graph(_pruned(arch)).SerializeToString()), batches)
    assert scale > 0.1 and diff <= 1e-4 * max(1.0, scale)


def test_no_embed_layernorm_and_dropped_layer(batches):
    m = drop_layers(_pruned("roberta", layers=4), [3])
    for cfg in (FusedConfig(), FusedConfig(layernorm="elementwise"), FusedConfig(layernorm="fused",
                                                                                  embed_layernorm=False)):
        diff, _ = _rel(m, fused_predictor(build_fused_graph(m, cfg).SerializeToString()), batches)
        assert diff <= 1e-4


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_pruned_vocabulary(arch, tok, batches):
    texts = ["the film is a quiet , warm and funny story", "the plot drags and the ending is flat ."]
    m, _ = prune_vocab(_pruned(arch), tok, texts)
    for cfg in (FusedConfig(), FusedConfig(layernorm="elementwise"), FusedConfig(layernorm="fused"),
                FusedConfig(layernorm="fused", embed_layernorm=False)):
        p = fused_predictor(build_fused_graph(m, cfg).SerializeToString())
        assert max(check_parity(m, p, batches).values()) <= 1e-4


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("bits,group", [(4, None), (8, None), (3, None), (2, None), (4, 32), (5, 16)])
def test_matmulnbits_same_codes(arch, bits, group, batches):
    q = rtn(_pruned(arch), bits, group_size=group, scope="all")
    proto = build_fused_graph(q, NBITS)
    ops = op_histogram(proto)
    assert ops["com.microsoft:MatMulNBits"] >= 7 and "MatMul" not in ops
    assert ops["com.microsoft:MultiHeadAttention"] == 2
    diff, _ = _rel(q, fused_predictor(proto.SerializeToString()), batches)
    assert diff <= 1e-4


def test_outliers_and_quantized_embeddings(batches, tok):
    texts = ["the film is a quiet , warm and funny story"]
    for arch in ARCHS:
        base = _pruned(arch)
        if arch == "bert":
            base, _ = prune_vocab(base, tok, texts)
        for emb_bits in (8, 4, 3):
            q = rtn(base, 4, outliers=0.01, embeddings=True, embedding_bits=emb_bits)
            proto = build_fused_graph(q, NBITS)
            ops = op_histogram(proto)
            assert ops["com.microsoft:GatherBlockQuantized"] == 1 and ops["ScatterElements"] >= 1
            diff, _ = _rel(q, fused_predictor(proto.SerializeToString()), batches)
            assert diff <= 1e-4, (arch, emb_bits, diff)


@pytest.mark.parametrize("arch", ARCHS)
def test_quantized_position_table(arch, batches, tok):
    """A k-bit position table is gathered from its codes (GatherBlockQuantized), token type 0 added
    in fp32: parity with the PyTorch variant, and the file sheds the fp32 table."""
    from axlab.compress.quantize import position_embedding_name, quantize_embeddings_
    from axlab.core.qmodules import QuantEmbedding
    base = _pruned(arch)
    if arch == "bert":
        base, _ = prune_vocab(base, tok, ["the film is a quiet , warm and funny story"])
    sizes = {}
    for pos_bits in (None, 8, 4):
        q = rtn(base, 4, embeddings=True, embedding_bits=4)
        quantize_embeddings_(q, 4, position_bits=pos_bits)
        assert isinstance(q.get_submodule(position_embedding_name(q)), QuantEmbedding) == bool(pos_bits)
        proto = build_fused_graph(q, NBITS)
        ops = op_histogram(proto)
        assert ops["com.microsoft:GatherBlockQuantized"] == (2 if pos_bits else 1)
        diff, _ = _rel(q, fused_predictor(proto.SerializeToString()), batches)
        assert diff <= 1e-4, (arch, pos_bits, diff)
        sizes[pos_bits] = len(proto.SerializeToString())
    assert sizes[4] < sizes[8] < sizes[None]


def test_mixed_precision_qkv(batches):
    from axlab.compress.quantize import rtn_linear
    from axlab.core.registry import attention_parts
    q = rtn(_pruned("bert"), 4)
    # layer 2: the value projection in 2 bits, query / key in 4 bits (mixed precision)
    attention_parts(q, 2).module.value = rtn_linear(attention_parts(_pruned("bert"), 2).v, 2)
    diff, _ = _rel(q, fused_predictor(build_fused_graph(q, NBITS).SerializeToString()), batches)
    assert diff <= 1e-4
    _check_int8_kernel(q, fused_predictor(build_fused_graph(q).SerializeToString()), batches)


@pytest.mark.parametrize("arch", ARCHS)
def test_int8_dynamic_quantize_matmul(arch, batches):
    q = int8_dynamic(_pruned(arch), embeddings=True)
    proto = build_fused_graph(q)
    ops = op_histogram(proto)
    assert ops["com.microsoft:DynamicQuantizeMatMul"] >= 7 and "MatMul" not in ops
    skip_if_int8_saturates()
    # ORT and torch.ao both quantize activations at run time, differently: compare each with
    # the dequantized-weight fp32 computation; ORT must be no further from it than torch.ao is
    from axlab.deploy.onnx_export import _export_view
    view, _ = _export_view(q)
    pred = fused_predictor(proto.SerializeToString())
    ort_diff = max(check_parity(view, pred, batches).values())
    with torch.no_grad():
        torch_diff = max(float((q(**b).logits - view(**b).logits).abs().max()) for b in batches)
    assert ort_diff <= 1.5 * torch_diff + 1e-3, (ort_diff, torch_diff)


def _check_int8_kernel(q, pred, batches):
    """ORT's graph against the int8 twin, as int8 models are checked: both quantize activations at run
    time; ORT must be no further from the dequantized-weight computation than torch.ao is."""
    from axlab.deploy.onnx_export import _export_view
    twin = int8_twin(q)
    view, _ = _export_view(twin)
    ort_diff = max(check_parity(view, pred, batches).values())
    with torch.no_grad():
        torch_diff = max(float((twin(**b).logits - view(**b).logits).abs().max()) for b in batches)
    assert ort_diff <= 1.5 * torch_diff + 1e-3, (ort_diff, torch_diff)
    return ort_diff


@pytest.mark.parametrize("bits,n", [(2, 6), (3, 7), (4, 5), (4, 8), (8, 3)])
def test_widened_codes_are_exact(bits, n):
    """The k-bit codes in the file widen, at session load, to exactly the codes (and folded outliers)."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from axlab.deploy.fused_onnx import _Graph, _Writer
    rng = np.random.default_rng(bits * 10 + n)
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    codes = rng.integers(lo, hi + 1, size=(5, n))                           # (K, N)
    scale = rng.uniform(0.5, 1.0, size=n).astype(np.float32)
    r, c = np.array([0, n - 1]), np.array([4, 0])                              # (output, input) positions
    codes[c, r] = 0                                                            # codes are 0 where outliers sit
    vals = np.array([40.2 * scale[0], -3.7 * scale[n - 1]], dtype=np.float16) if bits < 8 else None
    w = _Writer.__new__(_Writer)
    w.g = _Graph()
    out = w._widened_codes(codes, bits, "t", None if vals is None else (r, c, vals), scale)
    graph = helper.make_graph(w.g.nodes, "t", [], [helper.make_tensor_value_info(out, TensorProto.INT8, None)],
                              w.g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {})[0]
    want = codes.copy()
    if vals is not None:
        want[c, r] = np.round(vals.astype(np.float64) / scale[r])
    assert got.dtype == np.int8 and got.shape == (5, n) and np.array_equal(got, want)
    if bits < 8:                                                               # stored packed, not as int8
        assert sum(np.prod(i.dims) for i in w.g.inits if i.data_type == TensorProto.UINT8) < codes.size


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("bits,outliers", [(4, 0.0), (4, 0.01), (3, 0.01), (2, 0.0), (8, 0.01)])
def test_int8_kernel_runs_kbit_codes(arch, bits, outliers, batches):
    """Per-channel k-bit codes (the default): stored at their width, run by DynamicQuantizeMatMul."""
    q = rtn(_pruned(arch), bits, outliers=outliers, scope="all")
    proto = build_fused_graph(q)
    ops = op_histogram(proto)
    assert ops["com.microsoft:DynamicQuantizeMatMul"] >= 7 and "com.microsoft:MatMulNBits" not in ops
    # 8-bit codes leave int8 no room for outliers: they are added exactly at run time (a scatter-add)
    scatter_adds = sum(1 for n in proto.graph.node if n.op_type == "ScatterElements"
                       and any(a.name == "reduction" for a in n.attribute))
    assert (scatter_adds >= 7) == (bits == 8 and outliers > 0)
    assert "MatMul" not in ops
    if bits < 8:                      # the file holds k-bit codes: smaller than the same model's int8 graph
        assert proto.ByteSize() < build_fused_graph(int8_dynamic(_pruned(arch))).ByteSize()
    else:
        skip_if_int8_saturates()
    _check_int8_kernel(q, fused_predictor(proto.SerializeToString()), batches)


def test_int8_twin_and_kernel_choice():
    m = _pruned("bert")
    assert int8_twin(m) is None and int8_twin(rtn(tiny_model("bert"), 4, group_size=32)) is None
    assert int8_twin(rtn(m, 4), NBITS) is None
    with pytest.raises(ExportError, match="lowbit_kernel='nbits'"):
        build_fused_graph(rtn(m, 4, group_size=32), FusedConfig(lowbit_kernel="int8"))
    with pytest.raises(ValueError):
        FusedConfig(lowbit_kernel="fast")
    with pytest.raises(ValueError, match="layernorm"):
        FusedConfig(layernorm="skip")
    assert NBITS.padded() == FusedConfig(lowbit_kernel="nbits", unpad=False, cls_only=False)   # keeps the rest
    q = rtn(m, 4, outliers=0.01)
    twin = int8_twin(q)
    from axlab.core.qmodules import Int8Linear
    assert sum(isinstance(x, Int8Linear) for x in twin.modules()) >= 7
    # the twin's weights are the codes times the column scales; outliers folded onto the grid
    lin_q = q.bert.encoder.layer[0].intermediate.dense
    lin_t = twin.bert.encoder.layer[0].intermediate.dense
    step = lin_q.scale[:, :1]
    assert float((lin_t.weight - lin_q.weight).abs().max() / step.max()) <= 0.5 + 1e-4


def test_pack_nbits_layout():
    import numpy as np
    codes = np.array([[-8, 7, 0, 1] + [0] * 12 + [3]], np.int8)       # K = 17: padded to two blocks of 16
    b = pack_nbits(codes, 4, 16)
    assert b.shape == (1, 2, 8)
    assert b[0, 0, 0] == (0 | (15 << 4)) and b[0, 0, 1] == (8 | (9 << 4)) and b[0, 1, 0] == (11 | (8 << 4))


def test_topk_refused(tok, tmp_path):
    from axlab.core.attention import set_topk
    m = tiny_model("bert")
    set_topk(m, {0: 4})
    with pytest.raises(ExportError, match="top-k"):
        export_fused_onnx(m, tok, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_electra_embedding_projection(batches):
    """ELECTRA with embedding_size != hidden_size: LayerNorm in the embedding width, then a projection."""
    from axlab.core.attention import use_axlab_attention
    from transformers import AutoConfig, AutoModelForSequenceClassification
    torch.manual_seed(0)
    cfg = AutoConfig.for_model("electra", vocab_size=30522, embedding_size=32, hidden_size=64, num_hidden_layers=2,
                               num_attention_heads=4, intermediate_size=128, max_position_embeddings=160,
                               pad_token_id=0, num_labels=3)
    m = use_axlab_attention(_sharpen(AutoModelForSequenceClassification.from_config(cfg, attn_implementation="eager").eval()))
    m = prune_heads(m, {0: [0]})
    for q in (m, rtn(m, 4, scope="all")):
        diff, _ = _rel(q, fused_predictor(build_fused_graph(q, NBITS).SerializeToString()), batches)
        assert diff <= 1e-4
    _check_int8_kernel(q, fused_predictor(build_fused_graph(q).SerializeToString()), batches)   # the default path


def test_fused_support_names_what_it_cannot_write():
    from axlab.compress.hard_attention import hard_attention
    from axlab.core.testing import tiny_vision_model
    from axlab.deploy.fused_onnx import attention_node_count, fused_support
    m = tiny_model("bert")
    assert fused_support(m) is None and fused_support(rtn(m, 3, group_size=16)) is None
    assert "top-k hard attention in layer 1" in fused_support(hard_attention(m, {1: 2}))
    assert "vit" in fused_support(tiny_vision_model("vit"))
    assert fused_support(rtn(m, 3, group_size=8)) is not None           # no power-of-two block >= 16
    assert attention_node_count(op_histogram(build_fused_graph(m))) == 2


@pytest.mark.parametrize("arch", ARCHS)
def test_int8_attention_is_one_qattention(arch, batches):
    """int8 q/k/v: the input is quantized once and QAttention projects and attends; the numbers are those of
    the DynamicQuantizeMatMul + Split + MultiHeadAttention form (same quantization), and layers whose
    outliers must be added at run time keep that form."""
    q8 = int8_dynamic(_pruned(arch))
    auto, mha = build_fused_graph(q8), build_fused_graph(q8, FusedConfig(attention="mha"))
    ops = op_histogram(auto)
    assert ops["com.microsoft:QAttention"] == 2 and "com.microsoft:MultiHeadAttention" not in ops
    assert op_histogram(mha)["com.microsoft:MultiHeadAttention"] == 2
    pa, pm = fused_predictor(auto.SerializeToString()), fused_predictor(mha.SerializeToString())
    for b in batches:
        assert float((pa(b) - pm(b)).abs().max()) <= 1e-5
    q = rtn(_pruned(arch), 8, outliers=0.01, scope="all")        # 8-bit codes: outliers added at run time
    assert "com.microsoft:QAttention" not in op_histogram(build_fused_graph(q))


def test_mixed_widths_in_one_projection_stay_on_the_int8_kernel(batches):
    """q/k/v at different code widths (4-bit q and v, 2-bit k): each runs on the int8 kernel by itself
    (never MatMulNBits under lowbit_kernel='auto'), and the graph matches the int8 twin."""
    from axlab.compress.quantize import rtn_linear
    from axlab.core import registry
    from axlab.core.qmodules import set_module
    m = _pruned("bert")
    q = rtn(m, 4, scope="all")
    p = registry.attention_parts(q, 0)
    name = next(n for n, mod in q.named_modules() if mod is p.k)
    set_module(q, name, rtn_linear(registry.attention_parts(m, 0).k, 2))
    proto = build_fused_graph(q)
    ops = op_histogram(proto)
    assert "com.microsoft:MatMulNBits" not in ops and ops["com.microsoft:MultiHeadAttention"] >= 1
    _check_int8_kernel(q, fused_predictor(proto.SerializeToString()), batches)
