"""The request stream the engine consumes.

A workload is an iterable of `RequestSpec` in non-decreasing arrival order. Generators draw
everything they need up front as compact numpy arrays (arrival times, lengths, prompt indices)
and build the `RequestSpec` objects lazily while the engine iterates, so a million requests
never need a million Python objects alive at once.

Prompt identity is described by ``segments``: the prompt is a concatenation of identified
pieces ``((key, n_tokens), ...)`` whose lengths sum to ``input_tokens``. Two prompts whose
leading segments have equal keys share those tokens, which is what the KV manager's prefix
cache hashes. Keys are small deterministic tuples of str/int such as ``("sys", 3)``. Requests
with the same prompt identity carry the *same* tuple object, so the KV manager can cache block
hashes per segments tuple (an identity-keyed cache hits, an equality-keyed one hits too).
"""
from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

Segments = tuple[tuple[Hashable, int], ...]

#: Rows converted to Python objects at a time while iterating (``ndarray.tolist`` per chunk is
#: far cheaper than indexing numpy scalars one by one). Kept small: a large chunk keeps
#: thousands of fresh segment tuples alive, which the cyclic GC then scans again and again
#: (8192 made a 1 M-row trace 3-4x slower to iterate than 256).
CHUNK = 256


@dataclass(slots=True)
class RequestSpec:
    """One request as the client sends it: when, how long the prompt, how many tokens back.

    ``segments`` names the prompt's content (module docstring); ``session_id`` the conversation or
    client it belongs to; ``stage`` the rate stage that sent it; ``tenant``, ``priority``,
    ``slo_ttft_s`` and ``slo_tpot_s`` its request class (`workloads.classes`; None = no class / no
    target), carried into the engine's request log and the per-class metrics.
    """

    request_id: int
    arrival_s: float
    input_tokens: int
    output_tokens: int
    segments: Segments | None = None
    session_id: str | None = None
    stage: int = 0
    tenant: str | None = None
    priority: int = 0
    slo_ttft_s: float | None = None
    slo_tpot_s: float | None = None
    # Key under which the engine caches this request's generated tokens when it finishes, so that a
    # later prompt containing them (the next turn of a conversation: segments + ((output_key, n), ...))
    # hits the prefix cache. None: its output is not reused.
    output_key: Hashable | None = None
    # Multimodal inputs as ((image id, encoder tokens), ...): the same id is the same image (encoder cache).
    # Their tokens are part of input_tokens. None: a text-only prompt.
    images: tuple[tuple[Hashable, int], ...] | None = None
    # A difficulty score in [0, 1] (cascade routing to small / medium / large models); None: not given.
    difficulty: float | None = None
    # A result-cache hit flag from the trace (None: the cache's own hit model decides).
    cache_hit: bool | None = None


@dataclass(frozen=True, slots=True)
class ClassTag:
    """A request class as carried on requests: tenant name, priority and SLO targets (None = no target)."""

    tenant: str | None = None
    priority: int = 0
    slo_ttft_s: float | None = None
    slo_tpot_s: float | None = None


class Workload:
    """Base of every request stream: iterate it to get `RequestSpec` in arrival order.

    A workload whose requests depend on earlier completions (closed-loop clients, conversations
    paced after_finish) is not iterable; it has ``process(env, submit)``, a SimPy process that calls
    ``submit(spec)``, and ``on_finish(request)``, which the engine calls at each completion.

    ``dropped`` counts requests removed (e.g. trace rows with 0 input or output tokens),
    ``clipped`` counts requests whose lengths were cut to fit ``max_model_len``, and
    ``expected_count`` is the number of requests the iteration yields (None when unknown).
    """

    dropped: int = 0
    clipped: int = 0
    expected_count: int | None = None

    def __iter__(self) -> Iterator[RequestSpec]:  # pragma: no cover - interface
        raise NotImplementedError

    def __len__(self) -> int:
        if self.expected_count is None:
            raise TypeError(f"{type(self).__name__} does not know its length before iteration")
        return self.expected_count


def clip_to_model_len(input_tokens: np.ndarray, output_tokens: np.ndarray,
                      max_model_len: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Clip prompts to ``max_model_len - 1`` and prompt + output to ``max_model_len``.

    Returns (input, output, input_was_clipped mask, number of requests clipped at all).
    """
    if max_model_len is None:
        return input_tokens, output_tokens, np.zeros(len(input_tokens), dtype=bool), 0
    if max_model_len < 2:
        raise ValueError(f"max_model_len must be >= 2 (got {max_model_len})")
    inp = np.minimum(input_tokens, max_model_len - 1)
    out = np.minimum(output_tokens, max_model_len - inp)
    in_clipped = inp != input_tokens
    n_clipped = int(np.count_nonzero(in_clipped | (out != output_tokens)))
    return inp, out, in_clipped, n_clipped


def truncate_segments(segments: Segments, n_tokens: int) -> Segments:
    """The first ``n_tokens`` of a segmented prompt (the last kept segment is shortened)."""
    kept: list[tuple[Hashable, int]] = []
    left = n_tokens
    for key, n in segments:
        if left <= 0:
            break
        kept.append((key, min(n, left)))
        left -= n
    return tuple(kept)


class ArrayWorkload(Workload):
    """A workload backed by per-request numpy arrays, yielding `RequestSpec` lazily.

    ``segments_for(lo, hi)`` returns the segments tuples of rows ``lo..hi-1`` (None for a
    unique prompt); it should return the same object for the same prompt. ``session_codes`` / ``session_names``
    give each row's session as an index into a list of names (code -1 = no session);
    ``class_codes`` / ``classes`` likewise give each row's request class (`ClassTag`; -1 = none).
    Lengths are clipped to ``max_model_len`` here, once, and segments of clipped prompts are
    truncated to match.
    """

    def __init__(self, arrival_s: np.ndarray, input_tokens: np.ndarray, output_tokens: np.ndarray,
                 *, stage: np.ndarray | None = None,
                 segments_for: Callable[[int, int], Sequence[Segments | None]] | None = None,
                 output_keys_for: Callable[[int, int], Sequence[Hashable | None]] | None = None,
                 session_codes: np.ndarray | None = None, session_names: Sequence[str] | None = None,
                 max_model_len: int | None = None, dropped: int = 0,
                 class_codes: np.ndarray | None = None, classes: Sequence[ClassTag] | None = None,
                 difficulty: np.ndarray | None = None, cache_hit: np.ndarray | None = None) -> None:
        n = len(arrival_s)
        if not (len(input_tokens) == len(output_tokens) == n):
            raise ValueError("arrival_s, input_tokens and output_tokens must have the same length")
        self.arrival_s = np.asarray(arrival_s, dtype=np.float64)
        inp, out, self._in_clipped, self.clipped = clip_to_model_len(
            np.asarray(input_tokens, dtype=np.int64), np.asarray(output_tokens, dtype=np.int64),
            max_model_len)
        self.input_tokens, self.output_tokens = inp, out
        self.stage = np.zeros(n, dtype=np.int64) if stage is None else np.asarray(stage, dtype=np.int64)
        self._segments_for = segments_for
        self._output_keys_for = output_keys_for
        self._session_codes = session_codes
        self._session_names = list(session_names) if session_names is not None else None
        self.dropped = dropped
        self.expected_count = n
        self.class_codes = None if class_codes is None else np.asarray(class_codes, dtype=np.int64)
        self.classes = list(classes) if classes is not None else []
        self.difficulty = difficulty          # per-row score (NaN = none), for cascade routing
        self.cache_hit = cache_hit            # per-row result-cache flag (-1 = none, 0 miss, 1 hit)

    def set_classes(self, codes: np.ndarray, classes: Sequence[ClassTag]) -> None:
        """Tag every row with a request class (``codes`` index ``classes``; -1 = untagged)."""
        if len(codes) != len(self.arrival_s):
            raise ValueError("one class code per request is needed")
        self.class_codes = np.asarray(codes, dtype=np.int64)
        self.classes = list(classes)

    def __iter__(self) -> Iterator[RequestSpec]:
        n = len(self.arrival_s)
        seg_for = self._segments_for
        trunc_cache: dict[tuple[Segments, int], Segments] = {}
        names = self._session_names
        classes = self.classes
        for lo in range(0, n, CHUNK):
            hi = min(n, lo + CHUNK)
            arr = self.arrival_s[lo:hi].tolist()
            inp = self.input_tokens[lo:hi].tolist()
            out = self.output_tokens[lo:hi].tolist()
            stg = self.stage[lo:hi].tolist()
            cut = self._in_clipped[lo:hi].tolist()
            ses = self._session_codes[lo:hi].tolist() if self._session_codes is not None else None
            segl = seg_for(lo, hi) if seg_for is not None else None
            okeys = self._output_keys_for(lo, hi) if self._output_keys_for is not None else None
            cls = self.class_codes[lo:hi].tolist() if self.class_codes is not None else None
            dif = self.difficulty[lo:hi].tolist() if self.difficulty is not None else None
            hit = self.cache_hit[lo:hi].tolist() if self.cache_hit is not None else None
            for j in range(hi - lo):
                segs = segl[j] if segl is not None else None
                if segs is not None and cut[j]:
                    tk = (segs, inp[j])
                    t = trunc_cache.get(tk)
                    if t is None:
                        if len(trunc_cache) > 65536:  # unique prompts: keep memory bounded
                            trunc_cache.clear()
                        t = trunc_cache[tk] = truncate_segments(segs, inp[j])
                    segs = t
                sid = None
                if ses is not None and ses[j] >= 0:
                    sid = names[ses[j]]
                if cls is not None and cls[j] >= 0:
                    c = classes[cls[j]]
                    spec = RequestSpec(lo + j, arr[j], inp[j], out[j], segs, sid, stg[j],
                                       c.tenant, c.priority, c.slo_ttft_s, c.slo_tpot_s)
                else:
                    spec = RequestSpec(lo + j, arr[j], inp[j], out[j], segs, sid, stg[j])
                if okeys is not None:
                    spec.output_key = okeys[j]
                if dif is not None and dif[j] == dif[j]:
                    spec.difficulty = dif[j]
                if hit is not None and hit[j] >= 0:
                    spec.cache_hit = bool(hit[j])
                yield spec


#: Fixed child index of each random component, so adding one never shifts the others' streams.
COMPONENTS = {"arrivals": 0, "input_len": 1, "output_len": 2, "prompts": 3, "turns": 4, "think": 5,
              "classes": 6, "sample": 7, "system": 8}


def as_seed_sequence(seed: int | np.random.SeedSequence) -> np.random.SeedSequence:
    """``seed`` as a SeedSequence (ints are wrapped; SeedSequences pass through)."""
    return seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)


def component_rng(seed: int | np.random.SeedSequence, component: str) -> np.random.Generator:
    """An independent generator for one named component of a workload.

    Derived statelessly (the child ``spawn_key + (index,)``, as ``SeedSequence.spawn`` would
    make) so building the same workload twice from the same SeedSequence object gives the same
    requests, which ``seed.spawn()`` (it counts children already spawned) would not. Pass each
    workload a SeedSequence of its own (a child of the run's root) to keep it independent of the
    run's other components.
    """
    ss = as_seed_sequence(seed)
    child = np.random.SeedSequence(ss.entropy, spawn_key=(*ss.spawn_key, COMPONENTS[component]),
                                   pool_size=ss.pool_size)
    return np.random.default_rng(child)
