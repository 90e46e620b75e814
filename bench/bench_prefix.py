"""Shared-prefix scoring: today's engine, the engine with prefix sharing, and a naive loop, side by
side in one process, on the real RMB data.

    python bench/bench_prefix.py                      # the Chat task
    python bench/bench_prefix.py --scope all          # all 49 scenarios (tiny model by default)
    python bench/bench_prefix.py --scope chat --hidden 256 --layers 4

- engine: pytest-rmb's Engine with the HF model and --rmb-prefix-sharing off (dedupe,
  length-sorted token-budget batches, right padding).
- sharing: the same Engine and model with --rmb-prefix-sharing auto (the default; --mode on forces
  it for every group): each conversation prefix is run once, the answers as continuations against
  its cached keys/values. Target: >= 1.3x faster.
- naive: every response slot in dataset order (a pair's chosen and rejected, a list's best and
  losers), one text per forward, no dedupe. Target: sharing >= 4x faster. With --naive-every K
  only every K-th sample is timed and the time is scaled by response slots (printed as such).

The model is a Llama sequence-classification reward model with random (seeded) weights, a byte-level
BPE tokenizer trained here on the selection's own text, and a Llama-3-style chat template (tokens
after the assistant header); nothing is downloaded. Also prints the tokens each way processes, and
checks that sharing changes no score by more than 1e-4 and no RMB outcome.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
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
# (hidden size, layers): wide enough that the linear layers dominate, as in a real reward model.
# Narrower, RMB's long conversations make the model attention-bound (hidden 128: 64% of the time in
# attention), where a continuation's attention over its whole prefix saves little. All of RMB takes
# about 25 minutes at this size on 2 cores; --hidden 128 about 10.
MODEL_SIZES = {"chat": (256, 2), "all": (256, 2)}


def build_model(folder: Path, samples: list, hidden: int, layers: int, max_length: int, vocab: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import AutoModelForSequenceClassification, LlamaConfig, PreTrainedTokenizerFast

    specials = ["<unk>", "<|begin_of_text|>", "<|eot_id|>", "<pad>", "<|start_header_id|>", "<|end_header_id|>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    some = samples[::4]
    corpus = [m.content for s in some for m in s.conversation] + [r.text for s in some for r in s.responses]
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=vocab, special_tokens=specials,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", tok.token_to_id("<|begin_of_text|>"))])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                                        unk_token="<unk>", pad_token="<pad>", model_max_length=max_length)
    tokenizer.chat_template = TEMPLATE
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64), num_key_value_heads=max(1, hidden // 128),
        max_position_embeddings=max_length, num_labels=1, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    from transformers import LlamaForSequenceClassification

    LlamaForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.float32).eval()
    return model, tokenizer


class Clock:
    """Wall time and this process's CPU time: on a machine shared with other jobs the wall clock
    measures the neighbours as much as the code, the CPU time (with one thread) the work done."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu

    def __str__(self) -> str:
        return f"{self.wall:.1f} s wall, {self.cpu:.1f} s CPU"


def run_engine(model: HFRewardModel, samples: list, batch_size: int) -> tuple[Clock, dict, dict]:
    plan: dict[str, list] = {}
    for sample in samples:
        plan.setdefault(sample.scenario, []).append(sample)
    engine = Engine(model, plan, max_batch_size=batch_size)
    scores = {}
    with Clock() as clock:
        for sample in samples:
            for response, score in zip(sample.responses, engine.scores(sample)):
                scores[sample.conversation, response.text] = score
    return clock, engine.totals.as_dict(), scores


def run_naive(model: HFRewardModel, samples: list) -> Clock:
    with Clock() as clock:
        naive_loop(model, samples)
    return clock


def naive_loop(model: HFRewardModel, samples: list) -> None:
    for sample in samples:
        for response in sample.responses:
            request = ScoreRequest(sample.conversation, response.text)
            ids = model.tokenizer(model.render(request), add_special_tokens=False)["input_ids"]
            row = model._truncate(ids)
            with torch.inference_mode():
                model.model(input_ids=torch.tensor([row])).logits[0, 0].item()


def outcomes(samples: list, scores: dict) -> dict[tuple[str, str], list[bool]]:
    """Correct or not per sample, by RMB section (goal x kind)."""
    goal = {s.id: s.goal for s in registry()}
    sections: dict[tuple[str, str], list[bool]] = {}
    for sample in samples:
        values = [scores[sample.conversation, r.text] for r in sample.responses]
        sections.setdefault((goal[sample.scenario], sample.kind), []).append(all(values[0] > v for v in values[1:]))
    return sections


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--scope", default="chat",
                        help="chat, all, or a task name (Code, Harmlessness, ...)")
    parser.add_argument("--hidden", type=int, help="model width (default: 256 for chat, 128 for all)")
    parser.add_argument("--layers", type=int, help="decoder layers (default 2)")
    parser.add_argument("--max-length", type=int, default=4096)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=1, help="rounds of engine and sharing, alternating; best kept")
    parser.add_argument("--naive-every", type=int, default=None,
                        help="time the naive loop on every K-th sample only (default 1 for chat, 10 for all)")
    parser.add_argument("--no-naive", action="store_true")
    parser.add_argument("--mode", choices=("auto", "on"), default="auto", help="--rmb-prefix-sharing of sharing")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's own); 1 makes the CPU times a clean measure of work")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.data.is_dir():
        sys.exit(f"no RMB data at {args.data}; pass --data PATH")

    scope = args.scope.lower()
    if scope == "all":
        scenarios = list(registry())
    else:
        scenarios = [s for s in registry() if s.task.lower() == scope or (scope == "harmlessness" and s.goal == scope)]
        if not scenarios:
            sys.exit(f"--scope {args.scope}: no such task")
    samples = load_scenarios(args.data, scenarios)
    hidden, layers = MODEL_SIZES.get(scope, MODEL_SIZES["chat"])
    hidden, layers = args.hidden or hidden, args.layers or layers
    naive_every = args.naive_every or (10 if scope == "all" else 1)
    slots = sum(len(s.responses) for s in samples)
    unique = {(s.conversation, r.text) for s in samples for r in s.responses}
    conversations = {s.conversation for s in samples}
    chars_plain = sum(len(t) + sum(len(m.content) for m in c) for c, t in unique)
    chars_shared = sum(len(t) for _, t in unique) + sum(sum(len(m.content) for m in c) for c in conversations)
    print(f"scope {args.scope}: {len(scenarios)} scenarios, {len(samples)} samples, {slots} response slots, "
          f"{len(unique)} unique texts, {len(conversations)} unique conversations")
    print(f"characters: {chars_plain / 1e6:.2f} M in unique texts, {chars_shared / 1e6:.2f} M with each "
          f"conversation once ({chars_plain / chars_shared:.2f}x less)")

    with tempfile.TemporaryDirectory() as folder:
        hf_model, tokenizer = build_model(Path(folder), samples, hidden, layers, args.max_length, args.vocab)
    parameters = sum(p.numel() for p in hf_model.parameters()) / 1e6
    print(f"model: Llama, hidden {hidden}, {layers} layers, {parameters:.1f} M parameters, vocab {len(tokenizer)}, "
          f"max length {args.max_length}; {torch.get_num_threads()} CPU threads")
    settings = {way: ModelSettings("bench", max_length=args.max_length, prefix_sharing=mode)
                for way, mode in (("engine", "off"), ("sharing", args.mode))}
    models = {mode: HFRewardModel(hf_model, tokenizer, value, name="bench", weights="bench")
              for mode, value in settings.items()}
    print(f"prefix sharing: {models['sharing'].describe()['prefix_sharing']}; token budget per batch "
          f"{models['sharing'].batch_tokens}, at most {args.batch_size} texts")

    wall: dict[str, float] = {}
    cpu: dict[str, float] = {}
    stats: dict[str, dict] = {}
    scores: dict[str, dict] = {}
    for round_number in range(args.rounds):
        for way in ("engine", "sharing"):
            clock, stats[way], scores[way] = run_engine(models[way], samples, args.batch_size)
            wall[way] = min(wall.get(way, clock.wall), clock.wall)
            cpu[way] = min(cpu.get(way, clock.cpu), clock.cpu)
            print(f"round {round_number + 1}: {way} {clock}", flush=True)
    naive_note = ""
    if not args.no_naive:
        subset = samples[::naive_every]
        clock = run_naive(models["engine"], subset)
        scale = slots / sum(len(s.responses) for s in subset)
        wall["naive"], cpu["naive"] = clock.wall * scale, clock.cpu * scale
        naive_note = "" if naive_every == 1 else f" (timed on every {naive_every}th sample: {clock}, scaled by slots)"
        print(f"naive {wall['naive']:.1f} s wall, {cpu['naive']:.1f} s CPU{naive_note}", flush=True)

    plain_tokens = sum(models["engine"].cost([ScoreRequest(c, t) for c, t in unique]))
    naive_tokens = sum(models["engine"].cost([ScoreRequest(s.conversation, r.text) for s in samples for r in s.responses]))
    saved = stats["sharing"].get("prefix_tokens_saved", 0)
    print(f"tokens processed: engine {plain_tokens / 1e6:.2f} M, sharing {(plain_tokens - saved) / 1e6:.2f} M "
          f"({saved / 1e6:.2f} M prefix tokens saved, {plain_tokens / max(plain_tokens - saved, 1):.2f}x less); "
          f"texts through a shared prefix {stats['sharing'].get('prefix_shared_texts', 0)} of {len(unique)}; "
          f"truncated {stats['sharing']['truncated']}")
    # Where a forward's cost is its tokens (the linear layers), speed-up vs naive cannot pass the
    # ratio of tokens processed, except by what batching saves per token.
    print(f"tokens of the naive loop (every slot, no dedupe): {naive_tokens / 1e6:.2f} M, "
          f"{naive_tokens / max(plain_tokens - saved, 1):.2f}x those of sharing")
    print(f"batches: engine {stats['engine']['batches']}, sharing {stats['sharing']['batches']}")
    differences = [abs(scores["sharing"][key] - scores["engine"][key]) for key in unique]
    same_sections = outcomes(samples, scores["sharing"]) == outcomes(samples, scores["engine"])
    print(f"exactness: max |score(sharing) - score(engine)| = {max(differences):.2e} over {len(differences)} texts; "
          f"every RMB outcome identical: {same_sections}")
    print(f"sharing vs engine: {wall['engine'] / wall['sharing']:.2f}x faster by wall time, "
          f"{cpu['engine'] / cpu['sharing']:.2f}x by CPU time (target >= 1.3x)")
    if "naive" in wall:
        print(f"sharing vs naive: {wall['naive'] / wall['sharing']:.2f}x faster by wall time, "
              f"{cpu['naive'] / cpu['sharing']:.2f}x by CPU time (target >= 4x){naive_note}")


if __name__ == "__main__":
    main()
