"""Distillation on tiny models: the loss, bounded steps, recovery towards the teacher, zeros kept, replay."""
import pytest
import torch
from axlab.compress import apply_step, prune
from axlab.compress.distill import DistillConfig, distill, kd_loss
from axlab.core.data import Splits
from axlab.core.errors import AxlabError
from axlab.core.recipe import RecipeContext
from axlab.core.testing import tiny_model, tiny_split
from conftest import logits

pytestmark = pytest.mark.usefixtures("one_thread")


def test_kd_loss_terms():
    s = torch.tensor([[1.0, -1.0], [0.5, 0.2]])
    y = torch.tensor([0, 1])
    assert kd_loss(s, s, y, 2.0, 1.0).abs() < 1e-7                       # KL of identical logits is 0
    torch.testing.assert_close(kd_loss(s, s * 3, y, 1.0, 0.0), torch.nn.functional.cross_entropy(s, y))
    assert kd_loss(s, -s, y, 2.0, 1.0) > 0


def test_distill_moves_student_towards_teacher(tokenizer, batch):
    teacher = tiny_model("bert", seed=0)
    with torch.no_grad():                       # a random tiny model's logits are all alike; spread them
        teacher.classifier.weight *= 30
    student = prune.prune_heads(teacher, {0: [0, 1], 1: [2]})
    with torch.no_grad():                       # and damage the student so there is something to recover
        student.classifier.weight.copy_(torch.randn_like(student.classifier.weight) * 3)
    train = tiny_split(64, seed=7)
    gap = lambda m: (logits(m, batch) - logits(teacher, batch)).pow(2).mean()  # noqa: E731
    out = distill(student, teacher, tokenizer, train, steps=12, batch_size=16, alpha=1.0, lr=1e-3,
                  hidden_weight=1.0)
    assert out.axlab_distill_stats["steps"] == 12
    assert gap(out) < gap(student)
    assert out.axlab_recipe[-1]["op"] == "distill" and out.axlab_recipe[0]["op"] == "prune_heads"
    # the student's input is untouched and its pruned shape is kept
    assert student.classifier.weight.grad is None
    assert out.bert.encoder.layer[0].attention.self.query.out_features == 32


def test_distill_keeps_unstructured_zeros(tokenizer):
    teacher = tiny_model("bert", seed=0)
    student = prune.unstructured(teacher, 0.5)
    out = distill(student, teacher, tokenizer, tiny_split(32), steps=3, batch_size=16, lr=1e-3)
    assert abs(prune.sparsity_report(out)["encoder_sparsity"] - 0.5) < 0.01


def test_distill_op_replays_with_base_in_context(tokenizer, batch):
    teacher = tiny_model("bert", seed=0)
    student = prune.prune_heads(teacher, {1: [0]})
    sp = tiny_split(32)
    out = distill(student, teacher, tokenizer, sp, steps=2, batch_size=16)
    ctx = RecipeContext(tokenizer=tokenizer, splits=Splits("t", ["a", "b"], sp, sp, sp, 0, "x", "x"))
    ctx.base = teacher
    import copy
    replay = apply_step(copy.deepcopy(student), out.axlab_recipe[-1], ctx)
    torch.testing.assert_close(logits(replay, batch), logits(out, batch), atol=1e-6, rtol=0)
    ctx_nobase = RecipeContext(tokenizer=tokenizer, splits=ctx.splits)
    if not hasattr(ctx_nobase, "base") or ctx_nobase.base is None:
        with pytest.raises(AxlabError):
            apply_step(copy.deepcopy(student), out.axlab_recipe[-1], ctx_nobase)


def test_bad_config():
    for kw in ({"steps": 0}, {"temperature": 0}, {"alpha": 2}, {"hidden_weight": -1}, {"augment": -1}):
        with pytest.raises(ValueError):
            DistillConfig(**kw)


def test_teacher_logits_are_computed_once_and_match():
    """The frozen teacher's logits are cached per text: same numbers as calling it, every batch a hit."""
    from axlab.compress import distill as D
    from axlab.compress.prune import drop_layers
    from axlab.core.data import load_dataset
    from axlab.core.measure import iter_batches
    from axlab.core.testing import tiny_model, tiny_tokenizer

    teacher, tok = tiny_model("bert", layers=4), tiny_tokenizer()
    split = load_dataset("rotten_tomatoes").train.head(200)
    cache = D._teacher_cache(teacher, tok, split, D.DistillConfig())
    assert len(cache) == len(set(split.texts))
    for _, batch in iter_batches(tok, list(split.texts)[:70], 32, 64):
        with torch.no_grad():
            ref = teacher(**batch).logits
        assert torch.allclose(D._cached_logits(cache, batch), ref, atol=1e-5)
    assert D._cached_logits({}, batch) is None                          # a miss: the teacher runs instead
    student = drop_layers(teacher, [1, 3])
    with_cache = D.distill(student, teacher, tok, split, steps=6, progress=False)
    real = D._teacher_cache
    try:
        D._teacher_cache = lambda *a, **k: None
        without = D.distill(student, teacher, tok, split, steps=6, progress=False)
    finally:
        D._teacher_cache = real
    for a, b in zip(with_cache.parameters(), without.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_kd_loss_unlabelled_rows_learn_from_the_teacher_only():
    from axlab.compress.distill import IGNORE_LABEL
    s, t = torch.tensor([[1.0, -1.0], [0.5, 0.2], [0.0, 2.0]]), torch.tensor([[0.0, 1.0], [2.0, 0.0], [1.0, 1.0]])
    y = torch.tensor([0, IGNORE_LABEL, 1])
    T, a = 2.0, 0.3
    kl = torch.nn.functional.kl_div((s / T).log_softmax(-1), (t / T).log_softmax(-1), reduction="none",
                                    log_target=True).sum(-1)
    ce = torch.nn.functional.cross_entropy(s, y.clamp_min(0), reduction="none")
    want = torch.stack([a * T * T * kl[0] + (1 - a) * ce[0], T * T * kl[1], a * T * T * kl[2] + (1 - a) * ce[2]]).mean()
    torch.testing.assert_close(kd_loss(s, t, y, T, a), want)
    # all rows labelled: the usual batch-mean formula
    y2 = torch.tensor([0, 1, 1])
    usual = a * T * T * torch.nn.functional.kl_div((s / T).log_softmax(-1), (t / T).log_softmax(-1),
                                                   reduction="batchmean", log_target=True) + \
        (1 - a) * torch.nn.functional.cross_entropy(s, y2)
    torch.testing.assert_close(kd_loss(s, t, y2, T, a), usual)


def test_augmented_transfer_set():
    from axlab.compress import distill as D
    from axlab.core.data import Split
    texts = ["a fine and moving film about loss", "dull", "the plot never finds its footing at all here"]
    aug = D.augment_texts(texts, 3, seed=1)
    assert len(aug) == 9 and aug == D.augment_texts(texts, 3, seed=1) and aug != D.augment_texts(texts, 3, seed=2)
    for i, a in enumerate(aug):                      # every copy: words of its source, in order
        src = texts[i % 3].split()
        it = iter(src)
        assert a.split() and all(w in it for w in a.split())
    assert "dull" in aug                             # too short to perturb: kept as it is
    split = Split(texts, [1, 0, 0], ["rotten", "fresh"])
    ts = D._transfer_set(split, D.DistillConfig(augment=2))
    assert len(ts) == 9 and ts.labels[:3] == [1, 0, 0] and set(ts.labels[3:]) == {D.IGNORE_LABEL}
    assert D._transfer_set(split, D.DistillConfig()) is split


def test_distill_with_augmentation_runs_and_records_it(tokenizer, batch):
    teacher = tiny_model("bert", seed=0)
    student = prune.drop_layers(teacher, [1])
    out = distill(student, teacher, tokenizer, tiny_split(32), steps=4, batch_size=16, augment=2)
    assert out.axlab_distill_stats["steps"] == 4 and out.axlab_recipe[-1]["params"]["augment"] == 2
    assert torch.isfinite(logits(out, batch)).all()


def test_hidden_states_are_matched_at_the_students_own_layers(tokenizer, split):
    from axlab.compress.distill import hidden_slots
    from axlab.compress.prune import drop_layers
    teacher = tiny_model("bert", layers=3)
    student = drop_layers(teacher, [1])
    assert hidden_slots(student, teacher) == [0, 2] and hidden_slots(teacher, teacher) == [0, 1, 2]
    out = distill(student, teacher, tokenizer, split, steps=2, hidden_weight=1.0, progress=False)
    assert all(torch.isfinite(p).all() for p in out.parameters())


def _soup_world():
    teacher = tiny_model("bert", seed=0)
    with torch.no_grad():
        teacher.classifier.weight *= 30
    return teacher, prune.prune_heads(teacher, {0: [1]}), tiny_split(48, seed=3)


def test_soup_is_the_mean_of_its_students_and_replays(tokenizer, batch):
    """distill(soup=3) == soup of three students distilled with seeds s, s+1, s+2 == their weight mean;
    the recipe replays it; the inputs are untouched."""
    from axlab.compress.distill import soup
    teacher, student, sp = _soup_world()
    before = {k: v.clone() for k, v in student.state_dict().items()}
    kw = dict(steps=3, batch_size=16, lr=1e-3, augment=1)
    members = [distill(student, teacher, tokenizer, sp, seed=5 + i, **kw) for i in range(3)]
    assert not torch.equal(members[0].classifier.weight, members[1].classifier.weight)   # the seeds differ
    mean = torch.stack([m.bert.encoder.layer[1].output.dense.weight for m in members]).mean(0)
    s = soup(members)
    torch.testing.assert_close(s.bert.encoder.layer[1].output.dense.weight, mean, atol=1e-7, rtol=0)
    assert s.axlab_recipe[-1]["params"]["soup"] == 3 and s.axlab_recipe[-1]["params"]["seed"] == 5
    assert s.axlab_recipe[:-1] == student.axlab_recipe
    direct = distill(student, teacher, tokenizer, sp, seed=5, soup=3, **kw)
    torch.testing.assert_close(logits(direct, batch), logits(s, batch), atol=1e-6, rtol=0)
    assert direct.axlab_recipe == s.axlab_recipe
    assert len(direct.axlab_distill_stats["members"]) == 3
    for k, v in student.state_dict().items():
        assert torch.equal(v, before[k])
    import copy
    ctx = RecipeContext(tokenizer=tokenizer, splits=Splits("t", ["a", "b"], sp, sp, sp, 0, "x", "x"))
    ctx.base = teacher
    replay = apply_step(copy.deepcopy(student), s.axlab_recipe[-1], ctx)
    torch.testing.assert_close(logits(replay, batch), logits(s, batch), atol=1e-6, rtol=0)
    # one student is no soup: its step reads as it always did (recipes and cache keys stay valid)
    assert "soup" not in members[0].axlab_recipe[-1]["params"] and "soup" not in DistillConfig().to_dict()
    one = soup(members[:1])
    assert one.axlab_recipe == members[0].axlab_recipe and one is not members[0]
    torch.testing.assert_close(logits(one, batch), logits(members[0], batch), atol=0, rtol=0)
    from axlab.core.recipe import describe_step
    assert describe_step(s.axlab_recipe[-1]) == "distill from the base (3 steps, soup of 3 students)"
    assert describe_step(members[0].axlab_recipe[-1]) == "distill from the base (3 steps)"
    assert len(s.axlab_distill_stats["members"]) == 3


def test_soup_refuses_what_it_cannot_average_or_record(tokenizer):
    from axlab.compress.distill import soup
    teacher, student, sp = _soup_world()
    kw = dict(steps=1, batch_size=16)
    a, b, c = (distill(student, teacher, tokenizer, sp, seed=s, **kw) for s in (0, 1, 3))
    with pytest.raises(AxlabError, match="consecutive"):
        soup([a, c])
    with pytest.raises(AxlabError, match="same options"):
        soup([a, distill(student, teacher, tokenizer, sp, seed=1, steps=2, batch_size=16)])
    other = distill(prune.prune_heads(teacher, {1: [0]}), teacher, tokenizer, sp, seed=1, **kw)
    with pytest.raises(AxlabError, match="same start"):
        soup([a, other])
    with pytest.raises(AxlabError, match="not 'distill'"):
        soup([a, student])
    with pytest.raises(AxlabError, match="already"):
        soup([distill(student, teacher, tokenizer, sp, seed=0, soup=2, **kw), b])
    with pytest.raises(ValueError):
        DistillConfig(soup=0)
