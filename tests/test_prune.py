"""Structured / unstructured pruning on tiny models: parity with gates, masks and hooks; replay."""
import copy

import pytest
import torch
from axlab.compress import apply_recipe, prune
from axlab.core import registry
from axlab.core.attention import AttentionControl
from axlab.core.errors import AxlabError
from axlab.core.measure import size_report
from axlab.core.surgery import apply_layout, layout
from axlab.core.testing import tiny_model
from conftest import logits

pytestmark = pytest.mark.usefixtures("one_thread")



def _ffn_masked(model, masks: dict):
    """Hooks that zero FFN activations entering the down projection: the 'mask' equivalent."""
    handles = []
    for layer, idx in masks.items():
        def hook(mod, args, idx=idx):
            a = args[0].clone()
            a[..., idx] = 0
            return (a,)
        handles.append(registry.ffn_parts(model, layer).down.register_forward_pre_hook(hook))
    return handles


def test_prune_heads_equals_gates_and_replays(tiny, batch):
    heads = {0: [1, 2], 1: [0, 1, 2, 3]}
    pruned = prune_heads = prune.prune_heads(tiny, heads)
    gates = torch.ones(2, 4)
    for l, hs in heads.items():
        gates[l, hs] = 0
    torch.testing.assert_close(logits(pruned, batch), logits(tiny, batch, axlab=AttentionControl(gates=gates)),
                               atol=1e-5, rtol=0)
    assert pruned.axlab_recipe == [{"op": "prune_heads", "params": {"heads": {"0": [1, 2], "1": [0, 1, 2, 3]}}}]
    replay = apply_recipe(tiny, prune_heads.axlab_recipe)
    torch.testing.assert_close(logits(replay, batch), logits(pruned, batch), atol=0, rtol=0)
    assert size_report(pruned)["size_bytes"] < size_report(tiny)["size_bytes"]


@pytest.mark.parametrize("neurons", [{0: [0, 5, 7, 100]}, {1: list(range(128))}, {0: list(range(0, 128, 2)), 1: [3]}])
def test_prune_ffn_equals_mask(tiny, batch, neurons):
    ref_model = copy.deepcopy(tiny)
    handles = _ffn_masked(ref_model, neurons)
    ref = logits(ref_model, batch)
    for h in handles:
        h.remove()
    pruned = prune.prune_ffn(tiny, neurons)
    torch.testing.assert_close(logits(pruned, batch), ref, atol=1e-5, rtol=0)
    for l, idx in neurons.items():
        assert registry.ffn_parts(pruned, l).up.out_features == 128 - len(idx)
    torch.testing.assert_close(logits(apply_recipe(tiny, pruned.axlab_recipe), batch), logits(pruned, batch))


def test_drop_layer_equals_identity_hook(tiny, batch):
    ref_model = copy.deepcopy(tiny)
    h = registry.layers(ref_model)[1].register_forward_hook(lambda mod, args, out: args[0])
    ref = logits(ref_model, batch)
    h.remove()
    dropped = prune.drop_layers(tiny, [1])
    torch.testing.assert_close(logits(dropped, batch), ref, atol=1e-6, rtol=0)
    assert not torch.allclose(ref, logits(tiny, batch))
    assert sum(p.numel() for p in dropped.parameters()) < sum(p.numel() for p in tiny.parameters())
    # the original head grid still applies: gates on the remaining layer work, importance sees no heads in layer 1
    from axlab.analysis.importance import _present_mask
    assert _present_mask(dropped)[1].sum() == 0 and _present_mask(dropped)[0].all()


def test_public_transforms_do_not_mutate(tiny, batch, tokenizer, split):
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    ref = logits(tiny, batch)
    prune.prune_heads(tiny, {0: [0]})
    prune.prune_ffn(tiny, {1: [1, 2]})
    prune.drop_layers(tiny, [0])
    prune.prune_vocab(tiny, tokenizer, split.texts)
    prune.unstructured(tiny, 0.5)
    after = tiny.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    torch.testing.assert_close(logits(tiny, batch), ref, atol=0, rtol=0)


def _unseen(tokenizer, texts, new_text):
    """(batch of ``new_text``, mask of its ids outside the vocabulary of ``texts``)."""
    b = dict(tokenizer(new_text, return_tensors="pt"))
    keep = set(prune.vocab_ids(tokenizer, texts))
    mask = torch.tensor([[i not in keep for i in row] for row in b["input_ids"].tolist()])
    assert mask.any()
    return b, mask


def test_prune_vocab_keeps_logits_and_maps_unknowns(arch, tokenizer, split):
    model = tiny_model(arch)
    texts = split.texts
    pruned, report = prune.prune_vocab(model, tokenizer, texts[:12], eval_texts=texts, oov="unk")
    assert report["kept"] < report["vocab_size"] and report["size_bytes_after"] < report["size_bytes_before"]
    assert report["oov"] == "unk"
    seen = tokenizer(texts[:12], padding=True, return_tensors="pt")
    torch.testing.assert_close(logits(pruned, dict(seen)), logits(model, dict(seen)), atol=1e-6, rtol=0)
    # unseen text: equal to the original model fed [UNK] for every id not kept
    new_text = ["zebra quantum saxophone was good"]
    b, mask = _unseen(tokenizer, texts[:12], new_text)
    ids = b["input_ids"].clone()
    ids[mask] = tokenizer.unk_token_id
    torch.testing.assert_close(logits(pruned, b), logits(model, {**b, "input_ids": ids}), atol=1e-6, rtol=0)
    # OOV rate: counts only non-special tokens; zero on the texts that defined the vocabulary
    assert prune.prune_vocab(model, tokenizer, texts)[1]["oov_rate"] == 0.0
    assert 0 < prune.prune_vocab(model, tokenizer, texts[:3], eval_texts=new_text)[1]["oov_rate"] <= 1


def test_prune_vocab_nearest_maps_unknowns_to_their_most_similar_kept_token(arch, tokenizer, split):
    model = tiny_model(arch)
    texts = split.texts[:12]
    pruned, report = prune.prune_vocab(model, tokenizer, texts)          # default: nearest
    assert report["oov"] == "nearest"
    assert report["kept"] == prune.prune_vocab(model, tokenizer, texts, oov="unk")[1]["kept"]
    table = registry.word_embeddings(model).weight.detach()
    keep = prune.vocab_ids(tokenizer, texts)
    special = set(tokenizer.all_special_ids)
    targets = torch.tensor([i for i in keep if i not in special])
    b, mask = _unseen(tokenizer, texts, ["zebra quantum saxophone was good"])
    ids = b["input_ids"].clone()
    for pos in mask.nonzero().tolist():                                  # brute force: the most similar kept row
        sims = torch.nn.functional.cosine_similarity(table[ids[tuple(pos)]][None], table[targets], dim=-1)
        ids[tuple(pos)] = targets[int(sims.argmax())]
    assert not (ids == tokenizer.unk_token_id).any()
    torch.testing.assert_close(logits(pruned, b), logits(model, {**b, "input_ids": ids}), atol=1e-6, rtol=0)
    # the recipe replays the same mapping
    replayed = apply_recipe(model, pruned.axlab_recipe, tokenizer=tokenizer)
    assert torch.equal(registry.word_embeddings(replayed).old_to_new, registry.word_embeddings(pruned).old_to_new)
    with pytest.raises(AxlabError, match="oov"):
        prune.prune_vocab(model, tokenizer, texts, oov="closest")


def test_layout_roundtrip_with_skipped_layer_and_vocab(arch, tokenizer, split, batch):
    model = tiny_model(arch)
    v = prune.drop_layers(prune.prune_ffn(prune.prune_heads(model, {0: [1]}), {0: [2, 3]}), [1])
    v, _ = prune.prune_vocab(v, tokenizer, split.texts)
    fresh = tiny_model(arch, seed=3)
    apply_layout(fresh, layout(v))
    fresh.load_state_dict(v.state_dict(), strict=True)
    torch.testing.assert_close(logits(fresh, batch), logits(v, batch), atol=1e-6, rtol=0)
    replay = apply_recipe(model, v.axlab_recipe)
    torch.testing.assert_close(logits(replay, batch), logits(v, batch), atol=0, rtol=0)
    assert [s["op"] for s in v.axlab_recipe] == ["prune_heads", "prune_ffn", "drop_layers", "prune_vocab"]


def test_heads_by_budget_lowest_first_and_skips_removed():
    imp = torch.tensor([[0.5, 0.1, float("nan"), 0.9], [0.2, 0.05, 0.7, 0.3]])
    assert prune.heads_by_budget(imp, 3 / 7) == {0: [1], 1: [0, 1]}
    assert prune.heads_by_budget(imp, 0.0) == {}
    assert sum(len(v) for v in prune.heads_by_budget(imp, 1.0).values()) == 7
    with pytest.raises(AxlabError):
        prune.heads_by_budget(imp, 1.5)


def test_random_heads_seeded(tiny):
    a, b, c = (prune.random_heads(tiny, 0.5, seed=s) for s in (0, 0, 1))
    assert a == b and sum(len(v) for v in a.values()) == 4
    assert a != c or prune.random_heads(tiny, 0.5, seed=2) != a


@pytest.mark.parametrize("criterion", prune.FFN_CRITERIA)
def test_ffn_scores_zero_for_dead_neurons(criterion, tokenizer, split):
    model = tiny_model("bert")
    dead = [4, 9, 17]
    with torch.no_grad():
        registry.ffn_parts(model, 1).down.weight[:, dead] = 0
    scores = prune.ffn_importance(model, criterion, tokenizer, split)
    assert scores[1][dead].abs().max() == 0 and scores[1].abs().sum() > 0
    plan = prune.ffn_by_budget(model, 3 / 128, criterion, tokenizer, split, scores=scores)
    assert plan[1] == dead
    glob = prune.ffn_by_budget(model, 0.5, scope="global", scores=scores)
    assert sum(len(v) for v in glob.values()) == 128


@pytest.mark.parametrize("criterion,scope", [("magnitude", "global"), ("magnitude", "layer"), ("data", "global"),
                                             ("data", "layer")])
def test_unstructured_sparsity_and_replay(criterion, scope, tokenizer, batch):
    from axlab.core.data import Splits
    from axlab.core.testing import tiny_split
    model = tiny_model("bert")
    sp = tiny_split(16)
    splits = Splits("tiny", ["a", "b"], sp, sp, sp, 0, "x", "x")
    out = prune.unstructured(model, 0.5, criterion, scope, tokenizer=tokenizer, splits=splits)
    rep = prune.sparsity_report(out)
    assert abs(rep["encoder_sparsity"] - 0.5) < 0.01
    assert rep["size_bytes"] == size_report(model)["size_bytes"] and "not" in rep["note"]
    if scope == "layer":
        for _, lin in prune.encoder_linears(out):
            assert abs(float((lin.weight == 0).float().mean()) - 0.5) < 0.01
    replay = apply_recipe(model, out.axlab_recipe, tokenizer=tokenizer, splits=splits)
    torch.testing.assert_close(logits(replay, batch), logits(out, batch), atol=0, rtol=0)


def test_data_criterion_differs_from_magnitude(tokenizer, split):
    model = tiny_model("bert")
    with torch.no_grad():  # make one input feature of layer 0's query carry huge activations
        registry.layers(model)[0].attention.self.query.weight[:, 0] *= 1e-3
    from axlab.core.data import Splits
    splits = Splits("tiny", ["a", "b"], split, split, split, 0, "x", "x")
    mag = prune.unstructured(model, 0.3, "magnitude", "layer")
    dat = prune.unstructured(model, 0.3, "data", "layer", tokenizer=tokenizer, splits=splits)
    zm = [lin.weight == 0 for _, lin in prune.encoder_linears(mag)]
    zd = [lin.weight == 0 for _, lin in prune.encoder_linears(dat)]
    assert any(not torch.equal(a, b) for a, b in zip(zm, zd))


def test_bad_input_raises_with_hint(tiny, tokenizer):
    for call in (lambda: prune.prune_heads(tiny, {7: [0]}), lambda: prune.prune_heads(tiny, {0: [9]}),
                 lambda: prune.prune_ffn(tiny, {0: [1000]}), lambda: prune.drop_layers(tiny, [-1]),
                 lambda: prune.unstructured(tiny, 0.5, "data"), lambda: prune.unstructured(tiny, 2.0),
                 lambda: prune.ffn_importance(tiny, "bogus"), lambda: prune.prune_vocab(tiny, tokenizer, [])):
        with pytest.raises(AxlabError) as e:
            call()
        assert e.value.hint
