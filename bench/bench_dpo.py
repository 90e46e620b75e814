"""DPO rewards: pytest-rmb's dpo backend against RewardBench's DPOInference, side by side in one
process on the pairwise samples of an RMB dataset: seconds each, their ratio, and the largest
per-text difference.

    pip install --no-deps --target /opt/rewardbench rewardbench==0.1.4   # its dpo.py needs torch only
    RMB_REWARDBENCH_PATH=/opt/rewardbench python bench/bench_dpo.py                 # tiny models, sample
    RMB_REWARDBENCH_PATH=/opt/rewardbench python bench/bench_dpo.py \\
        --policy HuggingFaceH4/zephyr-7b-beta --ref HuggingFaceH4/mistral-7b-sft-beta \\
        --data ../shared/data/RMB_dataset --task Chat --device cuda --dtype bfloat16

- ours: the unique texts of the pairs, length-sorted and packed to the backend's token budget the
  way the engine packs them (pytest_rmb.batching.pack_batches), one forward per model per batch.
- rewardbench: DPOInference as its scripts/run_dpo.py drives it: each pair's chosen and rejected
  in one row, batches of 6 rows in dataset order, right padding.

Both read the same text (the conversation rendered with the generation prompt, then the answer and
the template's turn end; RewardBench appends that EOS itself). Without --policy two tiny random
Llama models are built offline (tests/tiny_models.py), which times overheads, not a real model.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pytest_rmb.backends import ModelSettings  # noqa: E402
from pytest_rmb.backends.dpo import BACKEND, DPORewardModel  # noqa: E402
from pytest_rmb.batching import pack_batches  # noqa: E402
from pytest_rmb.data import Message, sample_dataset  # noqa: E402
from pytest_rmb.models import ScoreRequest  # noqa: E402


def rewardbench_dpo():
    root = os.environ.get("RMB_REWARDBENCH_PATH")
    if root:
        path = Path(root) / "rewardbench" / "dpo.py"
    else:
        spec = importlib.util.find_spec("rewardbench")
        if spec is None or not spec.submodule_search_locations:
            sys.exit("rewardbench not found: set RMB_REWARDBENCH_PATH to a pip --target install of it")
        path = Path(next(iter(spec.submodule_search_locations))) / "dpo.py"
    module_spec = importlib.util.spec_from_file_location("rewardbench_dpo", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def pairs_of(data: Path, task: str | None, limit: int | None) -> list[tuple[ScoreRequest, ScoreRequest]]:
    pairs = []
    for path in sorted((data / "Pairwise_set").glob("**/*.json")):
        if task and task.lower() not in str(path.relative_to(data)).lower():
            continue
        for record in json.loads(path.read_text(encoding="utf-8")):
            conversation = tuple(Message(m["role"], m["content"]) for m in record["conversation_input"])
            pairs.append((ScoreRequest(conversation, record["chosen"]["answer"]),
                          ScoreRequest(conversation, record["reject"]["answer"])))
    return pairs[:limit] if limit else pairs


def score_ours(model: DPORewardModel, requests: list[ScoreRequest], batch_size: int) -> dict[ScoreRequest, float]:
    costs = model.cost(requests)
    rewards = {}
    for batch in pack_batches(costs, batch_size, model.batch_tokens or 4096):
        chunk = [requests[i] for i in batch]
        rewards.update(zip(chunk, model.score(chunk)))
    return rewards


def score_rewardbench(dpo, model: DPORewardModel, pairs, batch_size: int) -> dict[ScoreRequest, float]:
    tokenizer = model.tokenizer
    inference = dpo.DPOInference(model.policy, model.reference, tokenizer,
                                 types.SimpleNamespace(device=model.policy.device),
                                 ref_free_norm="norm" if model.mode == "ref" else model.mode)
    eos = tokenizer.eos_token or ""
    rows = []
    for chosen, rejected in pairs:
        prompt, chosen_text = model.render(chosen)
        _, rejected_text = model.render(rejected)
        # RewardBench appends EOS to every answer: hand it the text without the template's own.
        rows.append(inference.tokenize_row({"prompt": prompt, "text_chosen": chosen_text.removesuffix(eos),
                                            "text_rejected": rejected_text.removesuffix(eos)}))
    rewards = {}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    for first in range(0, len(rows), batch_size):
        chunk = rows[first:first + batch_size]
        batch = {}
        for key in chunk[0]:
            if key.startswith(("chosen_", "rejected_")):
                fill = -100 if key.endswith("labels") else 0 if key.endswith("attention_mask") else pad
                width = max(len(row[key]) for row in chunk)
                batch[key] = torch.tensor([row[key] + [fill] * (width - len(row[key])) for row in chunk])
        with torch.inference_mode():
            chosen, rejected = inference.inference_step(batch, ref_free=model.reference is None)
        for (c, r), a, b in zip(pairs[first:first + batch_size], chosen.tolist(), rejected.tolist()):
            rewards[c], rewards[r] = a * model.beta, b * model.beta
    return rewards


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy")
    parser.add_argument("--ref", help="reference model (default with --policy: reference-free)")
    parser.add_argument("--ref-free", choices=("norm", "avg", "sum"))
    parser.add_argument("--data", type=Path, default=None, help="RMB_dataset folder (default: the bundled sample)")
    parser.add_argument("--task", help="only pairwise files whose path contains this (e.g. Chat)")
    parser.add_argument("--limit", type=int, help="at most this many pairs")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    parser.add_argument("--max-length", type=int)
    parser.add_argument("--batch-size", type=int, default=64, help="ours: most texts per batch (engine default)")
    parser.add_argument("--rewardbench-batch-size", type=int, default=6, help="run_dpo.py's default")
    parser.add_argument("--repeats", type=int, default=3)
    options = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        policy, ref = options.policy, options.ref
        if policy is None:
            from tests.tiny_models import save_causal_lm

            policy = str(save_causal_lm(Path(scratch) / "policy", seed=1))
            ref = ref or str(save_causal_lm(Path(scratch) / "reference", seed=2))
        args = [("ref", ref)] if ref else [("ref_free", options.ref_free or "avg")]
        settings = ModelSettings(f"dpo:{policy}", device=options.device, dtype=options.dtype,
                                 max_length=options.max_length, args=BACKEND.parse_args(args))
        model = BACKEND.load(settings)
        assert isinstance(model, DPORewardModel)
        pairs = pairs_of(options.data or sample_dataset(), options.task, options.limit)
        requests = list(dict.fromkeys(r for pair in pairs for r in pair))
        dpo = rewardbench_dpo()
        times: dict[str, list[float]] = {"ours": [], "rewardbench": []}
        ours = theirs = {}
        for _ in range(options.repeats):  # alternate, so that drift in machine load hits both
            start = time.perf_counter()
            ours = score_ours(model, requests, options.batch_size)
            times["ours"].append(time.perf_counter() - start)
            start = time.perf_counter()
            theirs = score_rewardbench(dpo, model, pairs, options.rewardbench_batch_size)
            times["rewardbench"].append(time.perf_counter() - start)
        best = {name: min(values) for name, values in times.items()}
        difference = max(abs(ours[r] - theirs[r]) for r in requests)
        agree = sum((ours[c] > ours[r]) == (theirs[c] > theirs[r]) for c, r in pairs)
        print(f"{len(pairs)} pairs, {len(requests)} unique texts, {model.mode}, {model.policy.dtype}, "
              f"{model.policy.device}, truncated {model.take_counters()['truncated']}")
        print(f"ours        {best['ours']:8.2f} s  ({len(requests) / best['ours']:.1f} texts/s)")
        print(f"rewardbench {best['rewardbench']:8.2f} s  ({2 * len(pairs) / best['rewardbench']:.1f} texts/s)")
        print(f"ratio rewardbench/ours: {best['rewardbench'] / best['ours']:.2f}x (best of {options.repeats})")
        print(f"max |reward difference|: {difference:.3g}; pairwise verdicts agree on {agree}/{len(pairs)}")


if __name__ == "__main__":
    main()
