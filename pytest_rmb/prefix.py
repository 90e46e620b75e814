"""Shared-prefix scoring for decoder-only reward models: each conversation is run once.

In RMB every text repeats its conversation before the answer (41,586 response slots, 18,397 unique
texts, 3,003 unique conversations). In a decoder the keys and values of a token depend only on the
tokens before it, so a conversation's keys/values are the same for all of its answers: we run the
shared prefix once and then only the answers, as continuations against the cached keys/values.

Where the prefix ends: the longest common prefix of the *token ids* of the group's texts, exactly as
the plain path tokenizes them. Any split of the same ids gives the same scores, so templates that
put tokens after the assistant header, or BPE merges across the boundary, need no special case. The
split is capped so that every continuation still holds the token the model pools (the last non-pad
token; with pad = eos a template's trailing eos is skipped by the model's pooling).

Layout of a continuation batch: the cached prefixes are *left*-padded to the longest one, so that in
every row the distance between two key indices equals the distance between their positions (masks
built from key indices, sliding windows included, stay right); the continuations are right-padded;
position ids are explicit (prefix length + t). The prefix pass itself is right-padded, so that no
query row is fully masked (that would write NaN keys/values into the cache).

The model's own forward and pooling score the continuation, so a head that does something else shows
up in the probe run at load (scores with and without sharing must agree) and sharing is turned off.
"""

from __future__ import annotations

import inspect
import os
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pytest_rmb.batching import pack_batches

# auto: below this share of tokens saved over a selection, the second forward is not worth it.
MIN_SAVED_FRACTION = 0.10
# auto: a shorter shared prefix saves less than a continuation pass costs in overhead.
MIN_PREFIX_TOKENS = 8
# auto: a selection is shared only when the cost model expects its plain batches to cost at least
# this much more than the shared ones (the model leaves out the copies of cached keys/values).
MIN_PLANNED_GAIN = 1.10
# A (query, key) pair under an explicit mask (padded batches, continuations) costs this much more
# than one the causal kernel computes (a batch without padding): 5.2-5.5 ns against 4.2-4.3 ns per
# pair for RMB's texts on a CPU, and on a GPU a mask also rules out the fastest kernels.
MASKED_PAIR_COST = 1.25
# Cached prefixes alive at once. A planned window holds at most this many (and at most one batch
# budget of prefix tokens); the cap also bounds memory when batches come in another order.
MAX_ALIVE_PREFIXES = 256

PrefixKey = tuple[int, ...]


def common_prefix_length(rows: Sequence[Sequence[int]]) -> int:
    # commonprefix compares only the min and max sequence, in C: fast on long token lists.
    return len(os.path.commonprefix([list(row) for row in rows]))


def pooled_index(row: Sequence[int], pad_id: int | None) -> int:
    """Where a last-token pooling head reads this row: the last token that is not padding."""
    for index in range(len(row) - 1, -1, -1):
        if row[index] != pad_id:
            return index
    return 0


def split_points(
    rows: Sequence[Sequence[int]],
    groups: Sequence[Hashable],
    pad_id: int | None,
    limit: int,
    min_tokens: int,
) -> dict[int, int]:
    """Prefix length per row index, for rows that share a prefix with another row of their group.

    Rows at the length limit (possibly truncated: they lost their start) are left out; they are
    scored without sharing.
    """
    members: dict[Hashable, list[int]] = {}
    for index, (row, group) in enumerate(zip(rows, groups)):
        if len(row) < limit:
            members.setdefault(group, []).append(index)
    lengths: dict[int, int] = {}
    for indices in members.values():
        if len(indices) < 2:
            continue
        shared = common_prefix_length([rows[i] for i in indices])
        shared = min(shared, *(pooled_index(rows[i], pad_id) for i in indices))
        if shared >= max(min_tokens, 1):
            for i in indices:
                lengths[i] = shared
    return lengths


def saved_fraction(rows: Sequence[Sequence[int]], lengths: dict[int, int]) -> float:
    """Share of the tokens not run again when each distinct prefix is run once."""
    total = sum(len(row) for row in rows)
    if not total:
        return 0.0
    distinct = {tuple(rows[i][:length]) for i, length in lengths.items()}
    saved = sum(lengths.values()) - sum(len(key) for key in distinct)
    return saved / total


@dataclass(frozen=True)
class CostModel:
    """Rough work of a forward in FLOPs, to tell whether sharing a prefix pays off.

    Sharing saves the prefix's tokens in the linear layers, but a continuation attends with an
    explicit mask over all of its keys, while a text alone in its batch gets the causal kernel,
    which skips the upper half of the attention matrix. For a model narrow next to its texts
    (attention-bound) the long texts are cheaper without sharing.
    """

    per_token: float  # linear layers: 2 x the non-embedding parameters
    per_pair: float  # attention: QK and AV for one (query, key) pair over all layers
    alone_over: int  # texts longer than this get a batch alone (no padding: the causal kernel)

    @classmethod
    def of(cls, model: Any, batch_tokens: int) -> CostModel:
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        embeddings = model.get_input_embeddings().weight.numel() if hasattr(model, "get_input_embeddings") else 0
        parameters = sum(p.numel() for p in model.parameters()) - embeddings
        hidden = getattr(config, "hidden_size", 0) or 0
        layers = getattr(config, "num_hidden_layers", 0) or 0
        return cls(2.0 * parameters, 4.0 * hidden * layers, batch_tokens // 2)

    def plain(self, width: int) -> float:
        pairs = width * width / 2 if width > self.alone_over else width * width
        return self.per_token * width + self.per_pair * pairs

    def shared(self, prefix: int, rest: int, answers: int) -> float:
        once = self.per_token * prefix + self.per_pair * prefix * prefix
        return self.per_token * rest + self.per_pair * rest * (prefix + rest) + once / answers

    def padded_batch(self, widths: Sequence[int]) -> float:
        """A right-padded batch (a plain one, or a pass of prefixes): every row runs the longest
        width; only a batch without padding gets the causal kernel (half the pairs, no mask)."""
        width = max(widths)
        pairs = width * width / 2 if min(widths) == width else width * width * MASKED_PAIR_COST
        return len(widths) * (self.per_token * width + self.per_pair * pairs)

    def continuation_batch(self, prefixes: Sequence[int], rests: Sequence[int]) -> float:
        """Every row runs the longest continuation against the longest (left-padded) prefix, masked."""
        rest = max(rests)
        pairs = rest * (max(prefixes) + rest) * MASKED_PAIR_COST
        return len(rests) * (self.per_token * rest + self.per_pair * pairs)


def prefix_chunks(lengths: Sequence[int], budget: int) -> list[int]:
    """How many prefixes (longest first, ``lengths`` sorted so) each prefix pass runs: as many as
    fit ``budget`` padded tokens, at least one."""
    chunks: list[int] = []
    start = 0
    while start < len(lengths):
        end = start + 1
        while end < len(lengths) and lengths[start] * (end - start + 1) <= budget:
            end += 1
        chunks.append(end - start)
        start = end
    return chunks


def planned_cost(
    rows: Sequence[Sequence[int]],
    lengths: dict[int, int],
    shared: Sequence[tuple[int, list[int], list[PrefixKey]]],
    plain: Sequence[list[int]],
    cost: CostModel,
    budget: int,
) -> float:
    """The cost model's work for a plan as it will run: padded plain batches, the passes of each
    window's prefixes, and continuation batches padded to their longest prefix and continuation."""
    total = sum(cost.padded_batch([len(rows[i]) for i in batch]) for batch in plain)
    for _, batch, keys in shared:
        total += cost.continuation_batch([lengths[i] for i in batch], [len(rows[i]) - lengths[i] for i in batch])
        widths = sorted(map(len, keys), reverse=True)
        start = 0
        for count in prefix_chunks(widths, budget):
            total += cost.padded_batch(widths[start:start + count])
            start += count
    return total


def worth_sharing(rows: Sequence[Sequence[int]], lengths: dict[int, int], cost: CostModel) -> dict[int, int]:
    """The split points of the groups whose answers cost less as continuations than alone."""
    groups: dict[PrefixKey, list[int]] = {}
    for index, length in lengths.items():
        groups.setdefault(tuple(rows[index][:length]), []).append(index)
    kept: dict[int, int] = {}
    for key, indices in groups.items():
        prefix = len(key)
        shared = sum(cost.shared(prefix, len(rows[i]) - prefix, len(indices)) for i in indices)
        if shared < sum(cost.plain(len(rows[i])) for i in indices):
            kept.update((i, prefix) for i in indices)
    return kept


@dataclass
class _Batch:
    indices: list[int] = field(default_factory=list)
    longest_prefix: int = 0
    longest_rest: int = 0

    def fits(self, prefix: int, rest: int, max_size: int, max_cost: int) -> bool:
        if not self.indices:
            return True
        width = max(self.longest_prefix, prefix) + max(self.longest_rest, rest)
        return len(self.indices) < max_size and width * (len(self.indices) + 1) <= max_cost

    def add(self, index: int, prefix: int, rest: int) -> None:
        self.indices.append(index)
        self.longest_prefix = max(self.longest_prefix, prefix)
        self.longest_rest = max(self.longest_rest, rest)

    @property
    def width(self) -> int:
        return self.longest_prefix + self.longest_rest


def pack_shared(
    rows: Sequence[Sequence[int]],
    lengths: dict[int, int],
    max_batch_size: int,
    max_batch_cost: int,
) -> list[tuple[int, list[int], list[PrefixKey]]]:
    """Shared rows packed into batches; (padded width, indices, prefixes to run first) each.

    Answers to one conversation differ a lot in length, so batching them together would pad most
    of them. Instead prefixes go in windows (longest prefixes first, at most
    :data:`MAX_ALIVE_PREFIXES` of them and at most ``max_batch_cost`` prefix tokens, which bounds
    the cached keys/values alive at once), and within a window all answers are sorted by length and
    packed like the plain engine packs texts. The budget counts what a continuation batch holds:
    rows x (longest prefix + longest continuation) keys and values, as for a plain batch of the
    same texts. The first batch of a window runs all of the window's prefixes, sorted by length,
    so that the prefix passes are hardly padded.
    """
    by_prefix: dict[PrefixKey, list[int]] = {}
    for index, length in lengths.items():
        by_prefix.setdefault(tuple(rows[index][:length]), []).append(index)
    groups = sorted(by_prefix.items(), key=lambda item: (-len(item[0]), item[1][0]))
    batches: list[tuple[int, list[int], list[PrefixKey]]] = []
    start = 0
    while start < len(groups):
        end, window_tokens = start, 0
        while end < len(groups) and (end == start or (
                end - start < MAX_ALIVE_PREFIXES and window_tokens + len(groups[end][0]) <= max_batch_cost)):
            window_tokens += len(groups[end][0])
            end += 1
        members = [i for _, indices in groups[start:end] for i in indices]
        members.sort(key=lambda i: (lengths[i] - len(rows[i]), i))
        window = [_Batch()]
        for index in members:
            prefix, rest = lengths[index], len(rows[index]) - lengths[index]
            if not window[-1].fits(prefix, rest, max_batch_size, max_batch_cost):
                window.append(_Batch())
            window[-1].add(index, prefix, rest)
        keys = [key for key, _ in groups[start:end]]
        batches.extend((batch.width, batch.indices, keys if n == 0 else []) for n, batch in enumerate(window))
        start = end
    return batches


def merge_by_width(first: Sequence[tuple[int, list[int]]], second: Sequence[tuple[int, list[int]]]) -> list[list[int]]:
    """Two batch sequences, each kept in its own order, merged widest first."""
    merged: list[list[int]] = []
    i = j = 0
    while i < len(first) or j < len(second):
        if j >= len(second) or (i < len(first) and first[i][0] >= second[j][0]):
            merged.append(first[i][1])
            i += 1
        else:
            merged.append(second[j][1])
            j += 1
    return merged


def cache_keyword(function: Any) -> str | None:
    """The name under which ``function`` takes cached keys/values (renamed in transformers 5)."""
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return None
    for name in ("cache", "past_key_values"):
        if name in parameters:
            return name
    return None


def unsupported_reason(model: Any) -> str | None:
    """Why a model cannot continue from cached keys/values; None when it might (the probe decides)."""
    config = model.config
    if getattr(config, "is_encoder_decoder", False):
        return "an encoder-decoder model"
    if not getattr(config, "is_causal", True):
        return "the model attends bidirectionally"
    if cache_keyword(model.forward) is None:
        return ("the model's forward takes no cached keys/values (an encoder such as BERT, or a "
                "custom head)")
    if cache_keyword(model.base_model.forward) is None:
        return "the model's base takes no cached keys/values"
    return None


def _layers(cache: Any) -> list[tuple[Any, Any]]:
    """(keys, values) per layer, shape [batch, heads, tokens, head_dim], from any cache version."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    if hasattr(cache, "key_cache"):  # transformers 4.x DynamicCache
        return list(zip(cache.key_cache, cache.value_cache))
    return [(keys, values) for keys, values, *_ in cache]


def _make_cache(layers: list[tuple[Any, Any]]) -> Any:
    from transformers import DynamicCache

    if hasattr(DynamicCache, "from_legacy_cache"):  # transformers 4.x
        return DynamicCache.from_legacy_cache(tuple(layers))
    return DynamicCache(layers)


class PrefixRunner:
    """Runs prefixes once and their continuations against the cached keys/values.

    ``expect(key, uses)`` announces how many rows of a planned batch sequence will use a prefix; a
    prefix is dropped once its uses are done (or at the end of the call for an unplanned one), and
    never more than :data:`MAX_ALIVE_PREFIXES` stay alive.
    """

    def __init__(self, model: Any, pad_id: int, reward_index: int, batch_tokens: int):
        import torch

        self._torch = torch
        self.model = model
        self.base = model.base_model
        self.device = next(model.parameters()).device
        self.pad_id = pad_id
        self.reward_index = reward_index
        self.batch_tokens = batch_tokens
        self._keyword = cache_keyword(model.forward) or "past_key_values"
        self._base_keyword = cache_keyword(self.base.forward) or "past_key_values"
        self._store: OrderedDict[PrefixKey, list[tuple[Any, Any]]] = OrderedDict()
        self._uses: dict[PrefixKey, int] = {}
        self.saved_tokens = 0
        self.shared_texts = 0

    def reset(self) -> None:
        self._store.clear()
        self._uses.clear()

    def expect(self, key: PrefixKey, uses: int) -> None:
        self._uses[key] = self._uses.get(key, 0) + uses

    @property
    def alive(self) -> int:
        return len(self._store)

    def score(
        self, rows: Sequence[Sequence[int]], lengths: Sequence[int], prefetch: Sequence[PrefixKey] = ()
    ) -> list[float]:
        """Scores of ``rows``, each continuing its first ``lengths`` tokens; ``prefetch``: more
        prefixes of planned later batches, run now together with this batch's missing ones."""
        keys = [tuple(row[:length]) for row, length in zip(rows, lengths)]
        wanted = [k for k in prefetch if self._uses.get(k, 0) > 0] + keys
        missing = sorted(dict.fromkeys(k for k in wanted if k not in self._store), key=len, reverse=True)
        try:
            with self._torch.inference_mode():
                computed = self._run_prefixes(missing)
                values = self._run_continuations(rows, lengths, keys)
                self._release(keys)
        except BaseException:
            # Free every cached prefix before the engine retries smaller batches (out of memory);
            # the planned uses stay, so that a retried prefix is again kept for its later batches.
            self._store.clear()
            raise
        self.saved_tokens += sum(lengths) - computed
        self.shared_texts += len(rows)
        return values

    def _release(self, keys: list[PrefixKey]) -> None:
        for key in keys:
            self._uses[key] = self._uses.get(key, 0) - 1
        for key in dict.fromkeys(keys):
            if self._uses[key] <= 0:
                self._store.pop(key, None)
                del self._uses[key]
            else:
                self._store.move_to_end(key)
        while len(self._store) > MAX_ALIVE_PREFIXES:
            self._store.popitem(last=False)

    def _run_prefixes(self, keys: list[PrefixKey]) -> int:
        """Run the missing prefixes (longest first), packed to the token budget; returns the tokens run."""
        torch = self._torch
        ran = 0
        start = 0
        for count in prefix_chunks([len(key) for key in keys], self.batch_tokens):
            chunk = keys[start:start + count]
            longest = len(chunk[0])
            ids = torch.full((len(chunk), longest), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), longest), dtype=torch.long)
            for i, key in enumerate(chunk):
                ids[i, : len(key)] = torch.tensor(key, dtype=torch.long)
                mask[i, : len(key)] = 1
            cache = _make_cache([])
            positions = torch.arange(longest, dtype=torch.long).unsqueeze(0).expand(len(chunk), -1)
            self.base(
                input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                position_ids=positions.to(self.device), use_cache=True, **{self._base_keyword: cache},
            )
            layers = _layers(cache)
            for i, key in enumerate(chunk):
                # Own copies: a view would keep the whole padded batch alive as long as any prefix.
                self._store[key] = [(k[i, :, : len(key)].clone(), v[i, :, : len(key)].clone()) for k, v in layers]
            ran += sum(len(key) for key in chunk)
            start += count
        return ran

    def _run_continuations(
        self, rows: Sequence[Sequence[int]], lengths: Sequence[int], keys: list[PrefixKey]
    ) -> list[float]:
        torch = self._torch
        distinct = list(dict.fromkeys(keys))
        slot = {key: i for i, key in enumerate(distinct)}
        longest_prefix = max(lengths)
        longest_rest = max(len(row) - length for row, length in zip(rows, lengths))
        count = len(rows)
        ids = torch.full((count, longest_rest), self.pad_id, dtype=torch.long)
        mask = torch.zeros((count, longest_prefix + longest_rest), dtype=torch.long)
        positions = torch.zeros((count, longest_rest), dtype=torch.long)
        for i, (row, length) in enumerate(zip(rows, lengths)):
            rest = row[length:]
            ids[i, : len(rest)] = torch.tensor(rest, dtype=torch.long)
            mask[i, longest_prefix - length : longest_prefix + len(rest)] = 1
            positions[i] = torch.arange(length, length + longest_rest)
        which = torch.tensor([slot[key] for key in keys], dtype=torch.long)
        layers = []
        for layer in range(len(self._store[distinct[0]])):
            pair = []
            for part in (0, 1):
                first = self._store[distinct[0]][layer][part]
                padded = first.new_zeros((len(distinct), first.shape[0], longest_prefix, first.shape[-1]))
                for j, key in enumerate(distinct):
                    tensor = self._store[key][layer][part]
                    padded[j, :, longest_prefix - tensor.shape[-2]:] = tensor
                # One copy of its prefix per answer: attention needs matching batch rows.
                pair.append(padded.index_select(0, which.to(padded.device)))
            layers.append((pair[0], pair[1]))
        logits = self.model(
            input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
            position_ids=positions.to(self.device), use_cache=True,
            **{self._keyword: _make_cache(layers)},
        ).logits
        return logits[:, self.reward_index].float().cpu().tolist()


@dataclass(frozen=True)
class _Plan:
    lengths: dict[int, int]  # split point per shared row
    shared: list[tuple[int, list[int], list[PrefixKey]]]  # as pack_shared gives them
    plain: list[tuple[int, list[int]]]  # (padded width, indices)
    work: float  # the cost model's estimate of all of it


class PrefixSharing:
    """What ``--rmb-prefix-sharing`` decides for one model, and which request shares which prefix.

    ``plan`` (the engine's batch-planning hook) splits a selection into shared rows and plain
    texts and packs them; ``score`` runs a batch, shared rows through the runner and the others
    through the plain forward. Requests that were not planned (a direct ``score`` call) share
    within their batch.
    """

    def __init__(self, mode: str, runner: PrefixRunner, max_length: int):
        self.mode = mode
        self.runner = runner
        self.cost = CostModel.of(runner.model, runner.batch_tokens)
        self.max_length = max_length
        self.min_tokens = 1 if mode == "on" else MIN_PREFIX_TOKENS
        self._planned: dict[Hashable, int] = {}
        self._prefetch: dict[Hashable, list[PrefixKey]] = {}
        self._reported = (0, 0)

    def _split(self, rows: Sequence[Sequence[int]], groups: Sequence[Hashable]) -> dict[int, int]:
        lengths = split_points(rows, groups, self.runner.pad_id, self.max_length, self.min_tokens)
        if self.mode == "auto" and lengths:
            lengths = worth_sharing(rows, lengths, self.cost)
            if saved_fraction(rows, lengths) < MIN_SAVED_FRACTION:
                return {}
        return lengths

    def _pack(
        self, rows: Sequence[Sequence[int]], lengths: dict[int, int], costs: Sequence[int], max_batch_size: int,
        max_batch_cost: int,
    ) -> _Plan:
        shared = pack_shared(rows, lengths, max_batch_size, max_batch_cost)
        plain = [i for i in range(len(rows)) if i not in lengths]
        plain_batches = [
            (costs[plain[batch[0]]], [plain[j] for j in batch])
            for batch in pack_batches([costs[i] for i in plain], max_batch_size, max_batch_cost)
        ]
        work = planned_cost(rows, lengths, shared, [batch for _, batch in plain_batches], self.cost, max_batch_cost)
        return _Plan(lengths, shared, plain_batches, work)

    def _choose(
        self, rows: Sequence[Sequence[int]], groups: Sequence[Hashable], costs: Sequence[int], max_batch_size: int,
        max_batch_cost: int,
    ) -> tuple[_Plan, _Plan]:
        """(the plan this mode runs, the plan without sharing)."""
        self.cost = CostModel.of(self.runner.model, max_batch_cost)
        plain = self._pack(rows, {}, costs, max_batch_size, max_batch_cost)
        lengths = self._split(rows, groups)
        if not lengths:
            return plain, plain
        shared = self._pack(rows, lengths, costs, max_batch_size, max_batch_cost)
        # auto: judged on the batches as they will run (padding included), with a margin for what
        # the model leaves out (copying cached keys/values into each batch, the work outside
        # attention and the linear layers): the plain plan when in doubt.
        if self.mode == "auto" and shared.work * MIN_PLANNED_GAIN > plain.work:
            return plain, plain
        return shared, plain

    def estimate(
        self, rows: Sequence[Sequence[int]], groups: Sequence[Hashable], max_batch_size: int, max_batch_cost: int
    ) -> tuple[float, float]:
        """The cost model's work for one selection, planned as the engine plans it: without sharing,
        and as this mode scores it."""
        chosen, plain = self._choose(rows, groups, [len(row) for row in rows], max_batch_size, max_batch_cost)
        return plain.work, chosen.work

    def plan(
        self,
        requests: Sequence[Any],
        rows: Sequence[Sequence[int]],
        costs: Sequence[int],
        max_batch_size: int,
        max_batch_cost: int,
    ) -> list[list[int]]:
        self.runner.reset()
        self.runner.batch_tokens = max_batch_cost
        chosen, _ = self._choose(rows, [r.conversation for r in requests], costs, max_batch_size, max_batch_cost)
        self._planned = {request: chosen.lengths.get(i, 0) for i, request in enumerate(requests)}
        for index, length in chosen.lengths.items():
            self.runner.expect(tuple(rows[index][:length]), 1)
        self._prefetch = {requests[batch[0]]: keys for _, batch, keys in chosen.shared if keys}
        return merge_by_width([(width, batch) for width, batch, _ in chosen.shared], chosen.plain)

    def score(
        self,
        requests: Sequence[Any],
        rows: Sequence[Sequence[int]],
        plain: Callable[[list[Sequence[int]]], list[float]],
    ) -> list[float]:
        """Scores of a batch: shared rows continue their prefixes, the others go through ``plain``."""
        lengths = [self._planned.get(r) for r in requests]
        unplanned = [i for i, length in enumerate(lengths) if length is None]
        if unplanned:
            found = self._split([rows[i] for i in unplanned], [requests[i].conversation for i in unplanned])
            for j, i in enumerate(unplanned):
                lengths[i] = found.get(j, 0)
        shared = [i for i, length in enumerate(lengths) if length]
        alone = [i for i, length in enumerate(lengths) if not length]
        values = [0.0] * len(requests)
        if shared:
            prefetch = [key for r in requests for key in self._prefetch.get(r, ())]
            found_values = self.runner.score([rows[i] for i in shared], [lengths[i] or 0 for i in shared], prefetch)
            for i, value in zip(shared, found_values):
                values[i] = value
        if alone:
            for i, value in zip(alone, plain([rows[i] for i in alone])):
                values[i] = value
        for request in requests:
            self._planned.pop(request, None)
            self._prefetch.pop(request, None)
        return values

    def take_counters(self) -> dict[str, int]:
        saved, texts = self.runner.saved_tokens, self.runner.shared_texts
        counters = {"prefix_tokens_saved": saved - self._reported[0], "prefix_shared_texts": texts - self._reported[1]}
        self._reported = (saved, texts)
        # Nothing shared, nothing said: the stats of a run without sharing stay as they were.
        return {name: value for name, value in counters.items() if value}

    def describe(self) -> str:
        if self.mode == "on":
            return "on"
        # Read at load, before any selection: what was used shows in the prefix_* counters.
        return (f"auto: supported (used where a selection's texts share at least {MIN_SAVED_FRACTION:.0%} "
                f"of their tokens and its batches are expected to cost at least {MIN_PLANNED_GAIN:.2f}x "
                "less shared)")
