"""`reflex train-verifier` end to end on a tiny subset: a few steps into tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors import safe_open

from commands.cli import main as reflex_main
from services.verifier.training.data import questions, read_pairs, split_by_question


@pytest.mark.slow  # model training, however short
def test_train_verifier_writes_a_loadable_fp16_checkpoint(tmp_path: Path, monkeypatch, qqp_pairs):
    qqp = tmp_path / "qqp.jsonl"
    qqp.write_text("".join(json.dumps({"a": p.a, "b": p.b, "duplicate": p.duplicate}) + "\n" for p in qqp_pairs))
    out, val_file = tmp_path / "model", tmp_path / "val.jsonl.gz"
    monkeypatch.setenv("REFLEX_DEVICE", "cpu")
    code = reflex_main([
        "train-verifier", "--output", str(out), "--qqp", str(qqp), "--max-steps", "3", "--batch-size", "4",
        "--generated", "24", "--max-length", "32", "--no-eval", "--write-validation", str(val_file),
        "--validation-fraction", "0.3",
    ])
    assert code == 0
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    with safe_open(out / "model.safetensors", "pt") as f:
        assert {str(f.get_tensor(k).dtype) for k in f.keys()} == {"torch.float16"}
    assert json.loads((out / "training_progress.json").read_text())["step"] == 3
    # The validation file is exactly the question-disjoint part of the split.
    train, val = split_by_question(read_pairs(qqp), 0.3)
    assert read_pairs(val_file) == val
    assert not questions(train) & questions(read_pairs(val_file))

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    logits = model(**tok(["a question?"], ["another question?"], return_tensors="pt")).logits
    assert logits.shape == (1, 1)


def test_max_steps_zero_only_writes_the_validation_split(tmp_path: Path, qqp_pairs):
    qqp = tmp_path / "qqp.jsonl"
    qqp.write_text("".join(json.dumps({"a": p.a, "b": p.b, "duplicate": p.duplicate}) + "\n" for p in qqp_pairs))
    out, val_file = tmp_path / "model", tmp_path / "val.jsonl"
    code = reflex_main(["train-verifier", "--output", str(out), "--qqp", str(qqp), "--max-steps", "0",
                        "--write-validation", str(val_file)])
    assert code == 0
    assert not out.exists()
    assert read_pairs(val_file) == split_by_question(read_pairs(qqp), 0.1)[1]


@pytest.mark.slow  # one training step
def test_the_training_record_counts_each_source_of_the_pool(tmp_path: Path, monkeypatch, qqp_pairs):
    from reflex.settings import EvalSettings
    from services.verifier.training.data import read_handwritten, transitive_duplicates
    from services.verifier.training.train import _parser, train

    qqp = tmp_path / "qqp.jsonl"
    qqp.write_text("".join(json.dumps({"a": p.a, "b": p.b, "duplicate": p.duplicate}) + "\n" for p in qqp_pairs))
    monkeypatch.setenv("REFLEX_DEVICE", "cpu")
    args = _parser(EvalSettings()).parse_args([
        "--output", str(tmp_path / "model"), "--qqp", str(qqp), "--max-steps", "1", "--batch-size", "4",
        "--generated", "24", "--max-length", "32", "--no-eval", "--qqp-transitive", "--handwritten-repeat", "2",
    ])
    info = train(args)
    train_part, _ = split_by_question(read_pairs(qqp), 0.1)
    hand = len(read_handwritten())
    assert info["qqp_transitive_pairs"] == len(transitive_duplicates(train_part)) > 0
    assert info["qqp_train_pairs"] == len(train_part) + info["qqp_transitive_pairs"]
    assert (info["generated_pairs"], info["handwritten_pairs"], info["handwritten_repeat"]) == (24, hand, 2)
    assert info["train_pairs"] == info["qqp_train_pairs"] + 24 + 2 * hand
