"""An 8B Llama-shaped reward model over all of RMB on one GPU: how long, how busy, how much memory.

One command on an H100/H200 (no download: random weights, a tokenizer trained here on the data):

    python bench/bench_gpu.py [--data ../shared/data/RMB_dataset]

On a CPU, a tiny model of the same shape's kind over a subset, in a minute or two:

    python bench/bench_gpu.py --tiny [--limit 60]

- model: Llama-3-8B's shape (32 layers, hidden 4096, MLP 14336, 32 query and 8 key/value heads,
  rope theta 500000, 128,256-token vocabulary, 8,192-token context) with one reward label,
  random weights in bf16, FlashAttention 2 where ``flash_attn`` is installed, else SDPA.
  ``--tiny``: 2 layers, hidden 64, fp32 on the CPU.
- tokenizer: byte-level BPE trained offline on RMB's texts (the ``tokenizers`` trainer), with a
  Llama-3-style chat template; its vocabulary decides how many tokens a text is, as a real one would.
- scoring: pytest-rmb's own engine and ``hf:`` scorer (the code path of ``pytest --rmb-model
  hf:...``: per-scenario selections, dedupe, length-sorted token-budget batches, OOM back-off,
  the self-check) over every unique text of the selection, in four modes: padded batches, prefix
  sharing, padding-free packed batches, and both.

Per mode it prints wall time, text tokens per second, model FLOP utilisation, peak GPU memory,
OOM back-offs, texts truncated, the self-check, and whether every outcome agrees with the padded
mode's. FLOPs are the inference work of scoring each text alone, 2 x parameters x tokens plus
attention (QK and AV: 4 x layers x hidden per (query, key) pair, half the pairs being causal);
not 6 x parameters x tokens, which is training. A last line gives the verdict against the target:
all of RMB in at most 4 minutes on one H100/H200.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.metadata
import importlib.util
import platform
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pytest_rmb.backends import ModelLoadError, ModelSettings  # noqa: E402
from pytest_rmb.backends.hf import HFRewardModel  # noqa: E402
from pytest_rmb.data import Sample, load_scenarios  # noqa: E402
from pytest_rmb.engine import Engine, self_check_tolerance  # noqa: E402
from pytest_rmb.models import ScoreRequest  # noqa: E402
from pytest_rmb.scenarios import registry  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "RMB_dataset"
TARGET_SECONDS = 240.0
# Dense bf16 peak without sparsity, by the name torch reports (vendor data sheets, SXM parts).
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "L4": 121e12}

LLAMA3_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                 num_key_value_heads=8, rope_theta=500000.0, max_position_embeddings=8192, vocab_size=128256)
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, rope_theta=500000.0, max_position_embeddings=8192, vocab_size=0)

SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
            "<|pad|>"]
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
                 "{{ m['content'] }}<|eot_id|>{% endfor %}")

# name: (prefix sharing, packing)
MODES = {"padded": ("off", "off"), "shared": ("on", "off"), "packed": ("off", "on"), "shared+packed": ("on", "on")}


@dataclass
class Result:
    mode: str
    seconds: float = 0.0
    lengths: list = field(default_factory=list)  # tokens of each unique text, as the model reads it
    peak_gib: float | None = None
    oom_retries: int = 0
    truncated: int = 0
    counters: dict = field(default_factory=dict)
    outcomes: dict = field(default_factory=dict)  # (scenario, uid) -> correct
    scores: dict = field(default_factory=dict)  # (scenario, uid) -> scores, best/chosen first
    check: dict | None = None
    error: str | None = None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--tiny", action="store_true", help="a tiny model on the CPU (fp32), for CI")
    parser.add_argument("--limit", type=int, default=None,
                        help="score about this many samples, spread over the scenarios (default: all; 60 with --tiny)")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--max-length", type=int, default=8192, help="context limit (default 8192: nothing cut)")
    parser.add_argument("--batch-tokens", type=int, default=None, help="default: the engine's own for the device")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--attn", default="auto",
                        help="auto (flash_attention_2 where installed, else sdpa), sdpa, eager")
    parser.add_argument("--vocab", type=int, default=None,
                        help="tokenizer vocabulary (default 128256; 2000 with --tiny)")
    parser.add_argument("--self-check", type=int, default=16, help="texts re-scored alone after each mode")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's dense bf16 peak (default: by its name)")
    args = parser.parse_args()
    if not args.data.is_dir():
        sys.exit(f"no RMB data at {args.data}; pass --data PATH")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        sys.exit(f"--modes: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(MODES)}")
    limit = args.limit if args.limit is not None else (60 if args.tiny else None)

    device = "cpu" if args.tiny or not torch.cuda.is_available() else "cuda"
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    attn = args.attn
    if attn == "auto":
        attn = "flash_attention_2" if device == "cuda" and importlib.util.find_spec("flash_attn") else "sdpa"
    import tokenizers
    import transformers

    name = torch.cuda.get_device_name(0) if device == "cuda" else f"CPU ({platform.processor() or 'unknown'})"
    extra = f", CUDA {torch.version.cuda}" if device == "cuda" else ""
    if importlib.util.find_spec("flash_attn"):
        extra += f", flash_attn {importlib.metadata.version('flash_attn')}"
    print(f"python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}, "
          f"tokenizers {tokenizers.__version__}{extra}; device {name}, {torch.get_num_threads()} CPU threads; "
          f"attention {attn}, dtype {str(dtype).removeprefix('torch.')}")

    samples = select(load_scenarios(args.data, registry()), limit)
    requests = list(dict.fromkeys(ScoreRequest(s.conversation, r.text) for s in samples for r in s.responses))
    print(f"selection: {len(samples)} samples in {len({s.scenario for s in samples})} scenarios, "
          f"{len(requests)} unique texts{'' if limit is None else f' (--limit {limit})'}")

    started = time.perf_counter()
    tokenizer = train_tokenizer(requests, args.vocab or (2000 if args.tiny else LLAMA3_8B["vocab_size"]))
    print(f"tokenizer: byte-level BPE, {len(tokenizer)} tokens, trained in {time.perf_counter() - started:.1f} s")

    started = time.perf_counter()
    shape = TINY if args.tiny else LLAMA3_8B
    try:
        model = build_model(shape, tokenizer, device, dtype, attn)
    except (ImportError, ValueError, RuntimeError) as exc:
        if attn == "sdpa":
            raise
        # flash_attn present but not usable with this torch or GPU: time SDPA rather than nothing.
        print(f"attention {attn} unavailable ({type(exc).__name__}: {exc}); using sdpa")
        attn = "sdpa"
        model = build_model(shape, tokenizer, device, dtype, attn)
    with torch.inference_mode():
        # One small forward first: the first mode must not pay for the device's start-up alone.
        model(input_ids=torch.full((2, 16), tokenizer.bos_token_id, device=device))
    parameters = sum(p.numel() for p in model.parameters())
    embeddings = model.get_input_embeddings().weight.numel()
    print(f"model: Llama-shaped, {model.config.num_hidden_layers} layers, hidden {model.config.hidden_size}, "
          f"{parameters / 1e6:,.1f} M parameters ({(parameters - embeddings) / 1e6:,.1f} M without the embeddings), "
          f"built in {time.perf_counter() - started:.1f} s")

    peak = args.peak_tflops * 1e12 if args.peak_tflops else peak_flops(name) if device == "cuda" else None
    results: list[Result] = []
    for mode in modes:
        result = run_mode(mode, model, tokenizer, samples, requests, args, device)
        results.append(result)
        # Outcomes are compared with the padded mode's (the reference path), else the first mode's.
        reference = next((r for r in results if r.mode == "padded"), results[0])
        report(result, reference, model, peak, device)
    verdict(results, limit is None and not args.tiny and args.max_length >= 8192, len(requests))


def select(samples: list[Sample], limit: int | None) -> list[Sample]:
    """About ``limit`` samples spread evenly over the whole list (so over every scenario's stretch)."""
    if limit is None or limit >= len(samples):
        return samples
    step = len(samples) / limit
    return [samples[int(i * step)] for i in range(limit)]


def train_tokenizer(requests: list[ScoreRequest], vocab: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = list(dict.fromkeys([m.content for r in requests for m in r.conversation] + [r.response for r in requests]))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer, length=len(texts))
    # No length of its own (the "no limit" sentinel): the engine cuts at --max-length, and the
    # tokenizer does not warn about the texts that it will cut.
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                                   pad_token="<|pad|>", model_max_length=int(1e30))
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(shape: dict, tokenizer, device: str, dtype, attn: str):
    from transformers import AutoModelForSequenceClassification, LlamaConfig

    shape = dict(shape, vocab_size=max(shape["vocab_size"], len(tokenizer)))
    config = LlamaConfig(**shape, num_labels=1, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        # Built where it runs: 8B parameters initialise in seconds on the GPU, not minutes on the CPU.
        with torch.device(device):
            model = AutoModelForSequenceClassification.from_config(config, attn_implementation=attn)
    finally:
        torch.set_default_dtype(default)
    # Not model.to(dtype): the rotary inverse frequencies stay float32, as from_pretrained leaves them.
    return model.eval()


def run_mode(mode: str, model, tokenizer, samples: list[Sample], requests: list[ScoreRequest], args,
             device: str) -> Result:
    sharing, packing = MODES[mode]
    result = Result(mode)
    settings = ModelSettings(f"bench-{mode}", device=device, max_length=args.max_length, prefix_sharing=sharing,
                             args={"packing": packing})
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scorer = HFRewardModel(model, tokenizer, settings, name=f"llama-shaped ({mode})", weights="random")
    except ModelLoadError as exc:
        result.error = str(exc)
        return result
    plan: dict[str, list[Sample]] = {}
    for sample in samples:
        plan.setdefault(sample.scenario, []).append(sample)
    engine = Engine(scorer, plan, max_batch_size=args.batch_size, max_batch_cost=args.batch_tokens)
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    started = time.perf_counter()
    try:
        for sample in samples:
            outcome = engine.outcome(sample)
            result.outcomes[sample.scenario, sample.uid] = outcome.correct
            result.scores[sample.scenario, sample.uid] = outcome.record["scores"]
    except Exception as exc:  # noqa: BLE001 - one mode failing must not hide the others' figures
        result.error = f"{type(exc).__name__}: {exc}"
    if device == "cuda":
        torch.cuda.synchronize()
        result.peak_gib = torch.cuda.max_memory_allocated() / 2**30
    result.seconds = time.perf_counter() - started
    totals = engine.totals
    result.oom_retries, result.truncated = totals.oom_retries, totals.truncated
    result.counters = {k: v for k, v in totals.extra.items() if k.startswith(("prefix_", "packed_"))}
    # Counted after the timed run, whose own tokenizing is part of its time.
    result.lengths = scorer.cost(requests)
    if result.error is None and args.self_check:
        result.check = engine.self_check(args.self_check, 0, self_check_tolerance(str(model.dtype)))
    return result


def inference_flops(model, requests_tokens: list[int]) -> float:
    """Scoring each text alone: 2 FLOPs per parameter per token (embeddings are a lookup) plus
    attention's QK and AV, 4 x layers x hidden per (query, key) pair over the causal half."""
    config = model.config
    parameters = sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
    pairs = sum(n * (n + 1) / 2 for n in requests_tokens)
    return 2.0 * parameters * sum(requests_tokens) + 4.0 * config.num_hidden_layers * config.hidden_size * pairs


def peak_flops(name: str) -> float | None:
    return next((flops for key, flops in PEAK_BF16.items() if key in name), None)


def report(result: Result, reference: Result, model, peak: float | None, device: str) -> None:
    if result.error and not result.outcomes:
        print(f"{result.mode:>14}: not run: {result.error}")
        return
    seconds = max(result.seconds, 1e-9)
    tokens = sum(result.lengths)
    line = (f"{result.mode:>14}: {seconds:8.1f} s wall, {tokens / seconds:10.0f} tokens/s "
            f"({len(result.lengths)} texts, {tokens} tokens)")
    flops = inference_flops(model, result.lengths)
    if peak:
        line += f", MFU {flops / seconds / peak:.1%} of {peak / 1e12:.0f} TFLOP/s (inference FLOPs, see --help)"
    else:
        line += f", {flops / seconds / 1e12:.2f} TFLOP/s (no peak known{' on a CPU' if device == 'cpu' else ''})"
    print(line)
    memory = f"peak GPU memory {result.peak_gib:.1f} GiB" if result.peak_gib is not None else "peak GPU memory n/a"
    counters = ", ".join(f"{k} {v:g}" for k, v in sorted(result.counters.items())) or "no sharing or packing counters"
    print(f"{'':>16}{memory}, OOM back-offs {result.oom_retries}, truncated {result.truncated}; {counters}")
    if result.check is not None:
        check = result.check
        print(f"{'':>16}self-check {'passed' if check['ok'] else 'FAILED'}: {check['checked']} texts alone, "
              f"max difference {check['max_abs_diff']:.3g} (tolerance {check['tolerance']:g})")
    if result.error:
        print(f"{'':>16}stopped: {result.error}")
    same = sum(result.outcomes.get(key) == value for key, value in reference.outcomes.items())
    diffs = [abs(a - b) for key, scores in reference.scores.items() if key in result.scores
             for a, b in zip(result.scores[key], scores)]
    print(f"{'':>16}outcomes agree with {reference.mode}: {same} of {len(reference.outcomes)}; "
          f"max score difference {max(diffs, default=0.0):.3g}; accuracy "
          f"{sum(result.outcomes.values()) / max(len(result.outcomes), 1):.4f}")


def verdict(results: list[Result], whole: bool, texts: int) -> None:
    done = [r for r in results if not r.error]
    if not done:
        print("verdict: no mode finished")
        return
    best = min(done, key=lambda r: r.seconds)
    agree = all(r.outcomes == done[0].outcomes for r in done)
    checks = all(r.check is None or r.check["ok"] for r in done)
    within = best.seconds <= TARGET_SECONDS
    scope = "all of RMB" if whole else "NOT the target's setting (--tiny, --limit or a shorter --max-length)"
    print(f"verdict: {'PASS' if within and agree and checks and whole else 'FAIL' if whole else 'n/a'} - best "
          f"{best.mode} {best.seconds / 60:.2f} min for {texts} unique texts against the 4-minute target ({scope}); "
          f"outcomes {'identical across modes' if agree else 'DIFFER between modes'}; "
          f"self-check {'within tolerance' if checks else 'FAILED'}")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
