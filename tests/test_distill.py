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


# ----------------------------------------------------------------------------- teachers with their own tokenizer

NAMES = ["neg", "pos"]


def _named(model, names=NAMES):
    model.config.id2label = dict(enumerate(names))
    model.config.label2id = {n: i for i, n in enumerate(names)}
    return model


def _reversed(model):
    """A copy of ``model`` computing the same function with its classes in reverse order."""
    import copy
    out = copy.deepcopy(model)
    head = out.classifier if hasattr(out, "classifier") else out.score
    with torch.no_grad():
        head.weight.copy_(head.weight.flip(0))
        if head.bias is not None:
            head.bias.copy_(head.bias.flip(0))
    names = [out.config.id2label[i] for i in range(out.config.num_labels)]
    return _named(out, names[::-1])


def _bpe_tokenizer(pad: bool = False):
    """A byte-level BPE tokenizer learnt from the tiny split's words: other ids, other lengths than the
    student's WordPiece; without a padding token unless ``pad`` (as Llama-style tokenizers)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    specials = ["<s>", "</s>"] + (["<pad>"] if pad else [])
    tk.train_from_iterator(tiny_split(64).texts, trainers.BpeTrainer(
        vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>",
                                   **({"pad_token": "<pad>"} if pad else {}))


def _llama_teacher(pad_token_id=1, seed=1):
    """A tiny Llama-style sequence classifier (last-token pooling by pad id) with spread logits, labels NAMES.
    Its vocabulary is the student's size so the student's ids are valid (wrong) inputs for it too."""
    from transformers import LlamaConfig, LlamaForSequenceClassification
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, num_labels=2,
                      pad_token_id=pad_token_id)
    model = LlamaForSequenceClassification(cfg).eval()
    with torch.no_grad():
        model.score.weight *= 30
    return _named(model)


def _named_split(n=48, seed=3):
    sp = tiny_split(n, seed=seed)
    return type(sp)(list(sp.texts), list(sp.labels), list(NAMES))


def _params_close(a, b, atol=1e-6):
    return all(torch.allclose(p, q, atol=atol, rtol=0) for p, q in zip(a.parameters(), b.parameters()))


def test_teacher_tokenizer_same_as_students_changes_nothing(tokenizer, monkeypatch):
    """teacher_tokenizer = the student's (or an equal one): the student's weights are those of plain distillation,
    and so are they when the own-tokenizer path is forced (its cache: the same keys and logits)."""
    from axlab.compress import distill as D
    from axlab.core.testing import tiny_tokenizer
    teacher = _named(tiny_model("bert", seed=0))
    with torch.no_grad():
        teacher.classifier.weight *= 30
    student, sp = prune.prune_heads(teacher, {0: [0]}), _named_split()
    kw = dict(steps=4, batch_size=16, lr=1e-3)
    plain = distill(student, teacher, tokenizer, sp, **kw)
    for tt in (tokenizer, tiny_tokenizer()):
        same = distill(student, teacher, tokenizer, sp, teacher_tokenizer=tt, **kw)
        assert all(torch.equal(p, q) for p, q in zip(plain.parameters(), same.parameters()))
    # one tokenization: hidden states line up, so hidden-state matching is allowed and unchanged too
    hidden = distill(student, teacher, tokenizer, sp, hidden_weight=1.0, **kw)
    same = distill(student, teacher, tokenizer, sp, hidden_weight=1.0, teacher_tokenizer=tiny_tokenizer(), **kw)
    assert all(torch.equal(p, q) for p, q in zip(hidden.parameters(), same.parameters()))
    cfg = DistillConfig()
    ref = D._teacher_cache(teacher, tokenizer, sp, cfg)
    own = D._foreign_teacher_cache(teacher, tokenizer, tiny_tokenizer(), sp, cfg)
    assert own.keys() == ref.keys() and all(torch.allclose(own[k], ref[k], atol=1e-5) for k in ref)
    monkeypatch.setattr(D, "_same_tokens", lambda *a, **k: False)
    forced = distill(student, teacher, tokenizer, sp, teacher_tokenizer=tiny_tokenizer(), **kw)
    assert _params_close(plain, forced)


def test_teacher_reads_texts_through_its_own_tokenizer(tokenizer, monkeypatch):
    from axlab.compress import distill as D
    from axlab.core.data import Split
    from axlab.core.measure import encode
    teacher, bpe = _llama_teacher(), _bpe_tokenizer()
    assert bpe.pad_token is None
    reader = D._teacher_reader(bpe, teacher)
    assert bpe.pad_token is None and reader.pad_token == "</s>"            # a copy pads; the caller's is unchanged
    long = " ".join(["good film"] * 20)                                     # the student reads 22 of its 40 words
    sp = Split(list(tiny_split(20, seed=5).texts) + [long], [0] * 21, list(NAMES))
    cfg = DistillConfig(max_length=24)                                      # the others: <= 19 words, read whole
    cache = D._foreign_teacher_cache(teacher, tokenizer, reader, sp, cfg)
    assert len(cache) == 21
    seen = {t: t for t in sp.texts}
    seen[long] = " ".join(["good film"] * 11)
    for text in sp.texts:
        s = encode(tokenizer, [text], 24)
        key = D._row_key(s["input_ids"][0], s["attention_mask"][0])
        with torch.no_grad():                  # the teacher alone on its own encoding (no padding, no pad id needed)
            want = teacher(**bpe([seen[text]], return_tensors="pt")).logits[0]
        torch.testing.assert_close(cache[key], want, atol=1e-5, rtol=0)
    # mutation: the teacher fed the student's token ids gives other logits
    wrong = D._teacher_cache(teacher, tokenizer, sp, cfg)
    assert wrong.keys() == cache.keys()
    assert max((wrong[k] - cache[k]).abs().max().item() for k in cache) > 0.1
    # distillation with it runs, and leaves the caller's tokenizer as it was
    out = distill(_named(tiny_model("bert", seed=3)), teacher, tokenizer, sp, steps=2, batch_size=16,
                  teacher_tokenizer=bpe, max_length=24)
    assert out.axlab_distill_stats["steps"] == 2 and bpe.pad_token is None
    # a text whose logits were not computed is never read by the teacher from the student's ids
    monkeypatch.setattr(D, "_foreign_teacher_cache", lambda *a, **k: {})
    with pytest.raises(RuntimeError, match="not computed"):
        distill(out, teacher, tokenizer, sp, steps=2, batch_size=16, teacher_tokenizer=bpe)


def _shuffled_vocabulary(tokenizer, model):
    """A WordPiece tokenizer giving every non-special token another id, and a copy of ``model`` whose
    word table is permuted to match: on its own tokens it computes exactly what ``model`` does on the student's."""
    import copy
    from transformers import BertTokenizer
    vocab = tokenizer.get_vocab()
    specials = set(tokenizer.all_special_ids)
    movable = sorted(i for i in vocab.values() if i not in specials)
    perm = torch.randperm(len(movable), generator=torch.Generator().manual_seed(0)).tolist()
    new_id = dict(zip(movable, [movable[p] for p in perm]))
    shuffled = BertTokenizer(vocab={t: new_id.get(i, i) for t, i in vocab.items()}, do_lower_case=True)
    out = copy.deepcopy(model)
    table = out.bert.embeddings.word_embeddings.weight
    where = torch.tensor([new_id.get(i, i) for i in range(table.shape[0])])
    with torch.no_grad():
        table[where] = model.bert.embeddings.word_embeddings.weight.clone()
    return shuffled, out


def test_teacher_with_a_shuffled_vocabulary_teaches_as_the_original(tokenizer, batch):
    """A teacher reading its own (shuffled) ids through its own tokenizer gives the student the original teacher's
    lessons: the same student as distilling from the original, closer to it than before. Fed the student's ids
    instead (no teacher_tokenizer), it teaches something else."""
    teacher = _named(tiny_model("bert", seed=0))
    with torch.no_grad():
        teacher.classifier.weight *= 30
    shuffled_tok, shuffled = _shuffled_vocabulary(tokenizer, teacher)
    text = ["the plot was very boring ."]
    assert shuffled_tok(text)["input_ids"] != tokenizer(text)["input_ids"]
    torch.testing.assert_close(logits(shuffled, dict(shuffled_tok(text, return_tensors="pt"))),
                               logits(teacher, dict(tokenizer(text, return_tensors="pt"))), atol=1e-5, rtol=0)
    student = prune.prune_heads(teacher, {0: [0, 1], 1: [2]})
    with torch.no_grad():
        student.classifier.weight.copy_(torch.randn_like(student.classifier.weight) * 3)
    train = _named_split(64, seed=7)
    kw = dict(steps=12, batch_size=16, alpha=1.0, lr=1e-3)
    direct = distill(student, teacher, tokenizer, train, **kw)
    own = distill(student, shuffled, tokenizer, train, teacher_tokenizer=shuffled_tok, **kw)
    assert _params_close(own, direct, atol=1e-5)
    gap = lambda m: (logits(m, batch) - logits(teacher, batch)).pow(2).mean()  # noqa: E731
    assert gap(own) < gap(student)
    misread = distill(student, shuffled, tokenizer, train, **kw)
    assert not _params_close(misread, direct, atol=1e-4)


def test_classes_are_matched_by_name(tokenizer, batch):
    """A teacher with its classes in another order teaches the same student (cached logits, logits computed on the
    fly with hidden-state matching, and a teacher with its own tokenizer); a student in another order learns the
    same function, its labels aligned by name too."""
    teacher = _named(tiny_model("bert", seed=0))
    with torch.no_grad():
        teacher.classifier.weight *= 30
    student, sp = prune.prune_heads(teacher, {0: [0]}), _named_split()
    for extra in ({}, {"hidden_weight": 1.0}):
        kw = dict(steps=4, batch_size=16, lr=1e-3, **extra)
        a = distill(student, teacher, tokenizer, sp, **kw)
        b = distill(student, _reversed(teacher), tokenizer, sp, **kw)
        assert _params_close(a, b)
        assert not torch.equal(a.classifier.weight, student.classifier.weight)
    kw = dict(steps=4, batch_size=16, lr=1e-3, alpha=0.5, augment=1)     # augmented texts carry no label names
    a = distill(student, teacher, tokenizer, sp, **kw)
    r = distill(_reversed(student), teacher, tokenizer, sp, **kw)
    assert r.config.id2label == {0: "pos", 1: "neg"}
    torch.testing.assert_close(logits(r, batch).flip(-1), logits(a, batch), atol=1e-5, rtol=0)
    llama, bpe = _llama_teacher(), _bpe_tokenizer()
    bert = _named(tiny_model("bert", seed=3))
    a = distill(bert, llama, tokenizer, sp, teacher_tokenizer=bpe, **kw)
    b = distill(bert, _reversed(llama), tokenizer, sp, teacher_tokenizer=bpe, **kw)
    assert _params_close(a, b)


def test_teacher_errors_the_user_can_fix(tokenizer):
    from axlab.core.testing import tiny_image_split, tiny_vision_model
    teacher, bpe, sp = _llama_teacher(), _bpe_tokenizer(), _named_split(16)
    student = _named(tiny_model("bert", seed=3))
    with pytest.raises(AxlabError, match="different labels") as e:
        distill(_named(tiny_model("bert"), ["bad", "good"]), teacher, tokenizer, sp, steps=1,
                teacher_tokenizer=bpe)
    assert "bad" in e.value.message and "neg" in e.value.message and "same labels" in e.value.hint
    with pytest.raises(AxlabError, match="Hidden-state matching"):
        distill(student, teacher, tokenizer, sp, steps=1, hidden_weight=1.0, teacher_tokenizer=bpe)
    no_pad = _llama_teacher(pad_token_id=None)
    with pytest.raises(AxlabError, match="pad_token_id") as e:
        distill(student, no_pad, tokenizer, sp, steps=1, teacher_tokenizer=bpe)
    assert "pad_token_id = 1" in e.value.hint and no_pad.config.pad_token_id is None
    assert bpe.pad_token is None
    vit = tiny_vision_model()
    with pytest.raises(AxlabError, match="images"):
        distill(vit, vit, None, tiny_image_split(8), steps=1, teacher_tokenizer=bpe)
    with pytest.raises(AxlabError, match="numbers of labels"):
        distill(tiny_model("bert", num_labels=3), teacher, tokenizer, sp, steps=1, teacher_tokenizer=bpe)


def test_replay_loads_a_teacher_source_with_its_own_tokenizer(tokenizer, batch, tmp_path):
    """A recipe step whose teacher is a model source replays with that model's own tokenizer."""
    import copy
    from axlab.core.loading import load_model
    teacher = _named(tiny_model("bert", seed=4))
    with torch.no_grad():
        teacher.classifier.weight *= 30
    teacher.save_pretrained(tmp_path, safe_serialization=True)
    _bpe_tokenizer(pad=True).save_pretrained(tmp_path)
    bundle = load_model(str(tmp_path))
    student, sp = _named(prune.prune_heads(teacher, {1: [0]})), _named_split(32)
    out = distill(student, bundle.model, tokenizer, sp, steps=3, batch_size=16, lr=1e-3,
                  teacher_tokenizer=bundle.tokenizer, teacher_source=str(tmp_path))
    assert out.axlab_recipe[-1]["params"]["teacher"] == str(tmp_path)
    ctx = RecipeContext(tokenizer=tokenizer, splits=Splits("t", NAMES, sp, sp, sp, 0, "x", "x"))
    replay = apply_step(copy.deepcopy(student), out.axlab_recipe[-1], ctx)
    torch.testing.assert_close(logits(replay, batch), logits(out, batch), atol=1e-6, rtol=0)
    plain = distill(student, bundle.model, tokenizer, sp, steps=3, batch_size=16, lr=1e-3)   # reading WordPiece ids
    assert (logits(plain, batch) - logits(out, batch)).abs().max() > 1e-4
