import copy

import pytest
import torch
from axlab.compress import TRANSFORMS, Step, apply_recipe
from axlab.core.errors import AxlabError
from axlab.core.recipe import register_transform
from axlab.core.surgery import remove_heads_
from axlab.store.variants import Variant, VariantStore
from conftest import logits


@pytest.fixture
def _test_op():
    @register_transform("_test_remove_heads")
    def _op(model, ctx, layer, heads):
        remove_heads_(model, layer, heads)
        return model
    yield "_test_remove_heads"
    TRANSFORMS.pop("_test_remove_heads", None)


def test_store_round_trip(tmp_path, _test_op):
    store = VariantStore(tmp_path / "v.sqlite")
    v = store.add(Variant(name="a", base="default", dataset="rotten_tomatoes",
                          recipe=[Step(_test_op, layer=0, heads=[1])], measurements={"accuracy": 0.8}))
    store.add(Variant(name="b", base="default", dataset="rotten_tomatoes", workspace="other"))
    again = VariantStore(tmp_path / "v.sqlite")          # a restart
    got = again.get(v.id)
    assert got.recipe == v.recipe and got.measurements == {"accuracy": 0.8}
    assert [x.name for x in again.list()] == ["a"]
    assert [x.name for x in again.list(workspace="other")] == ["b"]
    again.update_measurements(v.id, {"latency_b1_ms": 3.0})
    assert again.get(v.id).measurements == {"accuracy": 0.8, "latency_b1_ms": 3.0}
    again.delete(v.id)
    with pytest.raises(AxlabError, match="No variant"):
        again.get(v.id)


def test_unknown_op_rejected(tmp_path):
    with pytest.raises(AxlabError, match="unknown op 'nope'"):
        VariantStore(tmp_path / "v.sqlite").add(Variant(name="x", base="d", dataset="d", recipe=[Step("nope")]))


def test_replay_reproduces_and_never_mutates(tiny, batch, _test_op):
    before = copy.deepcopy(tiny.state_dict())
    recipe = [Step(_test_op, layer=0, heads=[0, 2]), Step(_test_op, layer=1, heads=[3])]
    a = apply_recipe(tiny, recipe)
    b = apply_recipe(tiny, recipe)
    torch.testing.assert_close(logits(a, batch), logits(b, batch), atol=0, rtol=0)
    for k, t in tiny.state_dict().items():
        assert torch.equal(t, before[k])
    assert sum(p.numel() for p in a.parameters()) < sum(p.numel() for p in tiny.parameters())


def test_builtin_op_names_match_the_registered_transforms():
    import axlab.compress  # noqa: F401  (registers the built-in ops)
    from axlab.core.recipe import BUILTIN_OPS, TRANSFORMS
    registered = {op for op, fn in TRANSFORMS.items() if fn.__module__.startswith("axlab.compress")}
    assert registered == set(BUILTIN_OPS)
