"""Shared-prefix scoring on a grid of model shapes and RMB scopes: --rmb-prefix-sharing off, on and
auto side by side in one process, on the real RMB data.

    python bench/bench_prefix.py            # the full grid (about 20 minutes on 2 cores)
    python bench/bench_prefix.py --quick    # one scenario, every shape (a smoke run, under 3 minutes)
    python bench/bench_prefix.py --shapes narrow-shallow --scopes chat --rounds 3

Shapes: Llama sequence-classification reward models built here from a configuration, random
(seeded) weights, fp32 on the CPU: narrow (hidden 64: attention costs as much as the linear layers
on RMB's long texts) or wide (hidden 192: the linear layers dominate), shallow (1 layer) or deep
(2 layers), with one key/value head per attention head or grouped-query attention (4 query heads per
key/value head). Scopes: one scenario, the Chat task (`-m chat`), harmlessness and all of RMB; the
last two take every K-th conversation with all of its answers (--every), so that the grid fits in
minutes while keeping the mix of conversations and answers of the whole.

Every cell runs pytest-rmb's Engine three times per round, once per --rmb-prefix-sharing mode,
alternating the order from round to round, and keeps the best CPU time of each (one torch thread:
on a machine shared with other jobs the CPU time measures the work, the wall clock the neighbours).
It prints each mode's CPU time, auto/off (target <= 1.05 everywhere), and the gain over off that
the cost model predicted (its estimate of the work without sharing over its estimate of what the
mode runs) beside the measured one; and checks that no score moves by more than 1e-4 and no RMB
outcome changes.

The tokenizer is a byte-level BPE trained here on RMB's own text, with a Llama-3-style chat
template (tokens after the assistant header); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pytest_rmb.backends import ModelSettings  # noqa: E402
from pytest_rmb.backends.hf import HFRewardModel  # noqa: E402
from pytest_rmb.data import load_scenarios  # noqa: E402
from pytest_rmb.engine import Engine  # noqa: E402
from pytest_rmb.models import ScoreRequest  # noqa: E402
from pytest_rmb.scenarios import registry  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "RMB_dataset"
TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
)
MODES = ("off", "on", "auto")
HEAD_DIM = 32


@dataclass(frozen=True)
class Shape:
    name: str
    hidden: int
    layers: int
    grouped: bool  # grouped-query attention: 4 query heads share a key/value head

    @property
    def heads(self) -> int:
        return self.hidden // HEAD_DIM

    @property
    def kv_heads(self) -> int:
        return max(1, self.heads // 4) if self.grouped else self.heads


SHAPES = [Shape(f"{width}-{depth}{'-gqa' if grouped else ''}", hidden, layers, grouped)
          for width, hidden in (("narrow", 64), ("wide", 192))
          for depth, layers in (("shallow", 1), ("deep", 2))
          for grouped in (False, True)]
SCOPES = ("scenario", "chat", "harmlessness", "all")


def train_tokenizer(samples: list, vocab: int, max_length: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<|begin_of_text|>", "<|eot_id|>", "<pad>", "<|start_header_id|>", "<|end_header_id|>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    some = samples[::8]
    corpus = [m.content for s in some for m in s.conversation] + [r.text for s in some for r in s.responses]
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=vocab, special_tokens=specials,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", tok.token_to_id("<|begin_of_text|>"))])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                                        unk_token="<unk>", pad_token="<pad>", model_max_length=max_length)
    tokenizer.chat_template = TEMPLATE
    return tokenizer


def build_model(shape: Shape, tokenizer, max_length: int):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=shape.hidden, intermediate_size=4 * shape.hidden,
        num_hidden_layers=shape.layers, num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
        max_position_embeddings=max_length, num_labels=1, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    return LlamaForSequenceClassification(config).eval()


def every_kth_conversation(samples: list, every: int) -> list:
    """The samples of every ``every``-th conversation (in order of first appearance): all answers
    of a kept conversation stay, so its prefix is shared as in the whole."""
    order: dict = {}
    for sample in samples:
        order.setdefault(sample.conversation, len(order))
    return [s for s in samples if order[s.conversation] % every == 0]


def scope_samples(samples: list, scope: str, scenario: str, every: int) -> tuple[str, list]:
    """(label, samples) of one scope."""
    scenarios = {s.id: s for s in registry()}
    if scope == "scenario":
        return scenario, [s for s in samples if s.scenario == scenario]
    if scope == "chat":
        return "-m chat", [s for s in samples if scenarios[s.scenario].task == "Chat"]
    chosen = samples if scope == "all" else [s for s in samples if scenarios[s.scenario].goal == "harmlessness"]
    label = "all of RMB" if scope == "all" else "harmlessness"
    if every > 1:
        return f"{label} 1/{every}", every_kth_conversation(chosen, every)
    return label, chosen


def run_engine(model: HFRewardModel, samples: list, batch_size: int) -> tuple[float, dict, dict]:
    """CPU seconds, engine stats and scores of one Engine run over ``samples`` (one plan per scenario,
    as the plugin does)."""
    plan: dict[str, list] = {}
    for sample in samples:
        plan.setdefault(sample.scenario, []).append(sample)
    engine = Engine(model, plan, max_batch_size=batch_size)
    scores = {}
    started = time.process_time()
    for sample in samples:
        for response, score in zip(sample.responses, engine.scores(sample)):
            scores[sample.conversation, response.text] = score
    return time.process_time() - started, engine.totals.as_dict(), scores


def predicted_gain(model: HFRewardModel, samples: list, batch_size: int) -> tuple[float, int, float]:
    """The cost model's estimate of the work without sharing over its estimate of what the model's
    mode runs, summed over the scenarios as the engine plans them; the tokens without sharing; and
    the CPU seconds of tokenizing them (a part of every mode's time that sharing cannot change)."""
    sharing = model._sharing
    budget = model.batch_tokens
    assert budget is not None, "an HF model on a CPU counts tokens per batch"
    plain = chosen = 0.0
    tokens = 0
    tokenizing = 0.0
    by_scenario: dict[str, dict] = {}
    for sample in samples:
        texts = by_scenario.setdefault(sample.scenario, {})
        for response in sample.responses:
            texts[sample.conversation, response.text] = None
    for texts in by_scenario.values():
        requests = [ScoreRequest(c, t) for c, t in texts]
        started = time.process_time()
        model.cost(requests)
        tokenizing += time.process_time() - started
        rows = [model._tokens.pop(r) for r in requests]
        tokens += sum(map(len, rows))
        if sharing is None:
            continue
        without, used = sharing.estimate(rows, [r.conversation for r in requests], batch_size, budget)
        plain, chosen = plain + without, chosen + used
    return (plain / chosen if chosen else 1.0), tokens, tokenizing


def outcomes(samples: list, scores: dict) -> list[bool]:
    return [all(scores[s.conversation, s.responses[0].text] > scores[s.conversation, r.text] for r in s.responses[1:])
            for s in samples]


def run_cell(shape: Shape, tokenizer, samples: list, args) -> dict:
    hf_model = build_model(shape, tokenizer, args.max_length)
    models = {mode: HFRewardModel(hf_model, tokenizer, ModelSettings("bench", max_length=args.max_length,
                                                                     prefix_sharing=mode),
                                  name="bench", weights="bench")
              for mode in MODES}
    cpu: dict[str, float] = {}
    stats: dict[str, dict] = {}
    scores: dict[str, dict] = {}
    for round_number in range(args.rounds):
        order = MODES if round_number % 2 == 0 else MODES[::-1]
        for mode in order:
            seconds, stats[mode], scores[mode] = run_engine(models[mode], samples, args.batch_size)
            cpu[mode] = min(cpu.get(mode, seconds), seconds)
    predicted = {mode: predicted_gain(models[mode], samples, args.batch_size) for mode in ("on", "auto")}
    keys = list(scores["off"])
    return {
        "cpu": cpu,
        "tokens": predicted["on"][1],
        "predicted": {mode: value for mode, (value, _, _) in predicted.items()},
        "tokenizing": predicted["on"][2],
        "shared": {mode: stats[mode].get("prefix_shared_texts", 0) for mode in MODES},
        "texts": len(keys),
        "difference": max(abs(scores[mode][k] - scores["off"][k]) for mode in ("on", "auto") for k in keys),
        "same_outcomes": all(outcomes(samples, scores[mode]) == outcomes(samples, scores["off"]) for mode in MODES),
    }


HEADER = (f"{'shape':<20} {'scope':<36} {'texts':>6} {'tokens':>8} {'tok. s':>6} {'off s':>7} {'on s':>7} "
          f"{'auto s':>7} "
          f"{'on gain':>13} {'auto gain':>13} {'auto/off':>8} {'auto shares':>11} {'max diff':>8} ok")


def row(shape: Shape, label: str, cell: dict) -> str:
    cpu, predicted = cell["cpu"], cell["predicted"]

    def gain(mode: str) -> str:
        # predicted / measured
        return f"{predicted[mode]:.2f}/{cpu['off'] / cpu[mode]:.2f}"

    ratio = cpu["auto"] / cpu["off"]
    return (f"{shape.name:<20} {label:<36} {cell['texts']:>6} {cell['tokens'] / 1e3:>7.0f}K {cell['tokenizing']:>6.1f} "
            f"{cpu['off']:>7.1f} "
            f"{cpu['on']:>7.1f} {cpu['auto']:>7.1f} {gain('on'):>13} {gain('auto'):>13} {ratio:>7.2f}x"
            f"{'!' if ratio > 1.05 else ' '}{cell['shared']['auto']:>11} {cell['difference']:>8.1e} "
            f"{'yes' if cell['same_outcomes'] else 'NO'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--quick", action="store_true", help="only the one-scenario scope (a smoke run)")
    parser.add_argument("--shapes", nargs="+", choices=[s.name for s in SHAPES], help="default: all eight")
    parser.add_argument("--scopes", nargs="+", choices=SCOPES, help="default: all four (--quick: scenario)")
    parser.add_argument("--scenario", default="open_qa/personal_opinion_and_advice", help="the one-scenario scope")
    parser.add_argument("--every", type=int, default=96,
                        help="harmlessness and all of RMB: every K-th conversation with all of its answers "
                             "(1: the whole scope; hours on a CPU)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of off, on and auto, alternating; best kept")
    parser.add_argument("--max-length", type=int, default=4096)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: CPU time measures the work)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    # The tokenizer's warning about texts past its length limit would cut the table; the engine
    # truncates them as the plugin does.
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    if not args.data.is_dir():
        sys.exit(f"no RMB data at {args.data}; pass --data PATH")
    if args.scenario not in {s.id for s in registry()}:
        sys.exit(f"--scenario {args.scenario}: no such scenario")
    shapes = [s for s in SHAPES if args.shapes is None or s.name in args.shapes]
    scopes = args.scopes or (["scenario"] if args.quick else list(SCOPES))

    started = time.perf_counter()
    samples = load_scenarios(args.data, list(registry()))
    tokenizer = train_tokenizer(samples, args.vocab, args.max_length)
    selections = [scope_samples(samples, scope, args.scenario, args.every) for scope in scopes]
    print(f"RMB: {len(samples)} samples; tokenizer vocab {len(tokenizer)}, max length {args.max_length}; "
          f"{args.threads} torch thread(s), best of {args.rounds} rounds; CPU seconds per mode")
    print("gain columns: cost model's predicted / measured gain over off (CPU time); '!' marks auto > 1.05x off;\n"
          "tok. s: CPU seconds of tokenizing, a part of every mode's time (the cost model predicts the model's work)")
    print(HEADER, flush=True)
    worst = 0.0
    inexact = []
    for shape in shapes:
        for label, chosen in selections:
            cell = run_cell(shape, tokenizer, chosen, args)
            worst = max(worst, cell["cpu"]["auto"] / cell["cpu"]["off"])
            print(row(shape, label, cell), flush=True)
            if cell["difference"] > 1e-4 or not cell["same_outcomes"]:
                inexact.append(f"{shape.name} on {label}")
    print(f"worst auto/off: {worst:.2f}x (target <= 1.05x); {time.perf_counter() - started:.0f} s in all")
    if inexact:
        sys.exit(f"sharing changed a score by more than 1e-4 or an outcome: {', '.join(inexact)}")


if __name__ == "__main__":
    main()
