"""Attention's part of a step: decode attention with SM occupancy and Flash-Decoding splits, chunked prefill
attention, and the variants priced from the same sums (sliding-window and local/global layers, linear-attention
layers, int4 KV dequantisation, H2O / StreamingLLM eviction).

A mixin of `sim.cost.CostModel`, kept apart because it is the one part of a step whose cost depends on the
context, priced on every iteration: `_decode_scalar` is the hot path, `_decode_attention` the same arithmetic over
numpy arrays for fast-forwarded runs (identical float operations, so both agree to the bit).
"""
from __future__ import annotations

import math

from .hardware import DTYPE_BYTES

# H2O keeps, per query head and retained token, an fp32 accumulated attention score that each decode step
# reads and writes (8 B), fed by the step's softmax probabilities, which the attention kernel must write out
# (bf16, 2 B) and the accumulation read back (2 B): 12 bytes per head per retained token per layer.
H2O_BYTES_PER_HEAD_TOKEN = 12.0
# Split-KV (Flash-Decoding) partial results: per split, sequence and query head an fp32 output row and its
# log-sum-exp, written by the split kernel and read by the combine kernel.
SPLIT_PARTIAL_FP32 = 2 * 4.0
# MLA decode kernels (FlashMLA) give one thread block 64 query heads of a sequence (its KV is one latent).
MLA_HEADS_PER_CTA = 64
# A GPU without an SM count in the catalogue (TPU, Gaudi, Apple, Snapdragon) pays its decode blocks' prologues as
# the A100 the constants were fitted on would (108 SMs): seqs x units / 108 waves, on average.
REFERENCE_SMS = 108.0


class AttentionPricing:
    """Attention pricing of `sim.cost.CostModel` (it provides the model, GPU, constants and dtypes)."""

    def _attention_coefficients(self) -> tuple[float, ...]:
        m, t = self.model, self.tp
        ab = DTYPE_BYTES[self.act_dtype]
        heads = m.num_heads / t
        if m.attention_type == "mla":
            qk_dim = m.qk_nope_head_dim + m.qk_rope_head_dim
            prefill_flops = 2.0 * heads * (qk_dim + m.v_head_dim)            # per (query, key) pair
            decode_flops = 2.0 * heads * (2 * m.kv_lora_rank + m.qk_rope_head_dim)   # absorbed MLA
            q_bytes = 2 * heads * qk_dim * ab
            units = math.ceil(heads / MLA_HEADS_PER_CTA)
            out_dim = m.kv_lora_rank
        else:
            prefill_flops = decode_flops = 4.0 * heads * m.head_dim
            q_bytes = 2 * heads * m.head_dim * ab
            units = max(1, m.num_kv_heads // t) if m.num_kv_heads >= t else 1
            out_dim = m.head_dim
        softmax_layers = m.num_softmax_layers
        kv_tok = self.kv_bytes_per_token_per_gpu / softmax_layers if softmax_layers else 0.0
        peak = self.gpu.peak_flops(self.act_dtype)
        bw = self.gpu.memory_bw
        # naive (non-flash) attention writes the score matrix and reads it back, once for softmax
        self._score_bytes = 0.0 if self.flash_attention else 2 * 2 * heads * ab
        # --- variants: layer groups (count, window), occupancy, int4 KV dequantisation, eviction, linear layers
        sliding = m.num_sliding_layers
        self._groups = tuple((n, w) for n, w in ((softmax_layers - sliding, 0), (sliding, m.sliding_window or 0))
                             if n)
        sms = self.gpu.sms
        self._sms = 0.0 if (self._ideal or not sms) else float(sms)
        self._units = float(units)                                # decode work units per sequence (KV heads)
        self._split_tokens = self.k.flash_decoding_split_tokens
        self._partial = SPLIT_PARTIAL_FP32 * heads * (out_dim + 1)   # bytes per extra split per sequence
        kv_elems = kv_tok / self._kv_elem_bytes if kv_tok else 0.0
        fp32 = self.gpu.peak_tflops.get("fp32")
        self._dq = (kv_elems * self.k.int4_dequant_flops / (fp32 * 1e12)
                    if self.kv_dtype == "int4" and fp32 and not self._ideal else 0.0)   # seconds per KV token
        ev = self.kv_eviction
        self._evict_frac = float(ev[1]) if ev and ev[0] == "h2o" else 1.0
        # H2O keeps at least its floor of tokens (policies.kv_eviction: max(min_tokens, fraction x prompt))
        self._evict_floor = float(ev[2]) if ev and ev[0] == "h2o" else 0.0
        self._evict_budget = float(ev[2]) if ev and ev[0] == "streaming_llm" else 0.0
        self._h2o_bytes = H2O_BYTES_PER_HEAD_TOKEN * heads if ev and ev[0] == "h2o" else 0.0
        # linear attention: per token, S += k v^T and o = q S (4 d_k d_v FLOPs per head); per sequence and step,
        # the fp32 state is read and written once
        self._lin_layers = m.linear_attention_layers
        self._lin_flops = 4.0 * m.linear_state_elements / t
        self._lin_state = 2.0 * m.linear_state_elements / t * 4.0
        d_rate, d_bw = peak, bw * self._eff(self.k.attn_decode_mem_eff)
        # decode coefficients: seconds per KV token (compute, memory incl. H2O bookkeeping), per sequence (query
        # read, output write), per extra split and sequence (partials), per KV token (int4 dequantisation)
        self._dcoef = (decode_flops / d_rate, (kv_tok + self._h2o_bytes) / d_bw, q_bytes / d_bw,
                       self._partial / d_bw, self._dq)
        return (prefill_flops, decode_flops, kv_tok, q_bytes,
                peak * self._eff(self.k.attn_prefill_compute_eff), bw * self._eff(self.k.mem_eff),
                peak, bw * self._eff(self.k.attn_decode_mem_eff))

    def _decode_attention(self, seqs, ctx, xp=None, detail: bool = False):
        """Decode attention over all layers for `seqs` sequences with context sum `ctx` (sum of c + 1).

        `ctx` is a number, or a numpy array when `xp` is numpy (`decode_run_times`); `_decode_scalar` is the
        same arithmetic for one number, written out for speed: every path does the same float operations, so
        they agree exactly. Per layer group (global / sliding-window layers): the KV read is the context,
        min(ctx, seqs x window) for sliding layers (exact when every sequence is on one side of the window),
        then the eviction policy's retained part; time = max(compute, memory, int4 dequantisation) / occupancy
        + floors + a block prologue per wave (`attn_decode_wave_s`) + a cost per sequence (`attn_decode_seq_s`).
        Occupancy: work units = seqs x KV heads x KV splits fill waves of SMs
        (units / (ceil(units / SMs) x SMs)); Flash-Decoding splits each sequence's KV while the units of one
        wave leave SMs idle, never below `flash_decoding_split_tokens` per split.
        """
        if xp is None:
            mn, mx, fl, ce = min, max, math.floor, math.ceil
        else:
            mn, mx, fl, ce = xp.minimum, xp.maximum, xp.floor, xp.ceil
        d_tc, m1, m2, m3, dq = self._dcoef
        total = 0.0
        flops = nbytes = bound_c = bound_m = 0.0
        sms = self._sms
        for layers, window in self._groups:
            c = mn(ctx, seqs * window) if window else ctx
            if self._evict_budget:
                c = mn(c, seqs * self._evict_budget)
            if self._evict_frac != 1.0:
                c = mx(c * self._evict_frac, mn(c, seqs * self._evict_floor))
            s = 1.0
            occ = 1.0
            waves = seqs * self._units / REFERENCE_SMS     # no SM count: the fitting A100's waves, on average
            if sms:
                base = seqs * self._units
                if self.flash_decoding:
                    s = mx(1.0, mn(fl(sms / base), ce(c / seqs / self._split_tokens)))
                units = base * s
                waves = ce(units / sms)
                occ = units / (waves * sms)
            tc = c * d_tc
            tm = c * m1 + seqs * m2 + (s - 1.0) * seqs * m3
            body = mx(tc, tm)
            if dq:
                body = mx(body, c * dq)
            # one kernel, plus the combine kernel when the KV is split
            total = total + layers * (body / occ + self._floor * (1.0 + mn(s - 1.0, 1.0)) + self._dec_wave * waves
                                      + self._dec_seq * seqs)
            if detail:
                by = tm * self._attn[7]
                flops, nbytes = flops + layers * self._attn[1] * c, nbytes + layers * by
                bound_c, bound_m = bound_c + tc, bound_m + tm
        if self._lin_layers:
            tc = self._lin_flops * seqs / self._attn[6]
            tm = self._lin_state * seqs / self._attn[7]
            total = total + self._lin_layers * (mx(tc, tm) + self._floor)
            if detail:
                flops = flops + self._lin_layers * self._lin_flops * seqs
                nbytes = nbytes + self._lin_layers * self._lin_state * seqs
                bound_c, bound_m = bound_c + tc, bound_m + tm
        if detail:
            return total, flops, nbytes, "compute" if bound_c >= bound_m else "memory"
        return total

    def _plain_decode_pricer(self):
        """`_decode_scalar` for the usual case (one group of full-attention layers, an SM count, Flash-Decoding, no
        int4 KV, eviction or linear layers) as a closure over its constants, or None when a variant applies. It
        does `_decode_scalar`'s float operations in the same order, so both give the same times to the bit."""
        if (len(self._groups) != 1 or self._groups[0][1] or not self._sms or not self.flash_decoding
                or self._evict_budget or self._evict_frac != 1.0 or self._lin_layers or self._dcoef[4]):
            return None
        layers = self._groups[0][0]
        d_tc, m1, m2, m3, _ = self._dcoef
        sms, per_seq_units, split = self._sms, self._units, self._split_tokens
        floor, dec_wave, dec_seq = self._floor, self._dec_wave, self._dec_seq
        fl, ce = math.floor, math.ceil

        def price(seqs: int, c: int) -> float:
            base = seqs * per_seq_units
            a, b = fl(sms / base), ce(c / seqs / split)
            s = a if a < b else b
            s = s if s > 1.0 else 1.0
            units = base * s
            waves = ce(units / sms)
            occ = units / (waves * sms)
            tc = c * d_tc
            tm = c * m1 + seqs * m2 + (s - 1.0) * seqs * m3
            body = tc if tc > tm else tm
            k = s - 1.0
            return 0.0 + layers * (body / occ + floor * (1.0 + (k if k < 1.0 else 1.0)) + dec_wave * waves
                                   + dec_seq * seqs)

        return price

    def _decode_scalar(self, seqs: int, ctx: int) -> float:
        """`_decode_attention` for one step (hot path of `step_time`): the same operations, inlined (and, in the
        usual case, replaced per instance by `_plain_decode_pricer`'s closure)."""
        d_tc, m1, m2, m3, dq = self._dcoef
        total = 0.0
        sms = self._sms
        for layers, window in self._groups:
            c = ctx
            if window:
                w = seqs * window
                c = c if c < w else w
            if self._evict_budget:
                w = seqs * self._evict_budget
                c = c if c < w else w
            if self._evict_frac != 1.0:
                kept = c * self._evict_frac
                w = seqs * self._evict_floor
                w = c if c < w else w
                c = kept if kept > w else w
            s = 1.0
            occ = 1.0
            waves = seqs * self._units / REFERENCE_SMS
            if sms:
                base = seqs * self._units
                if self.flash_decoding:
                    a, b = math.floor(sms / base), math.ceil(c / seqs / self._split_tokens)
                    s = a if a < b else b
                    s = s if s > 1.0 else 1.0
                units = base * s
                waves = math.ceil(units / sms)
                occ = units / (waves * sms)
            tc = c * d_tc
            tm = c * m1 + seqs * m2 + (s - 1.0) * seqs * m3
            body = tc if tc > tm else tm
            if dq:
                t = c * dq
                body = body if body > t else t
            k = s - 1.0
            total = total + layers * (body / occ + self._floor * (1.0 + (k if k < 1.0 else 1.0))
                                      + self._dec_wave * waves + self._dec_seq * seqs)
        if self._lin_layers:
            tc = self._lin_flops * seqs / self._attn[6]
            tm = self._lin_state * seqs / self._attn[7]
            total = total + self._lin_layers * ((tc if tc > tm else tm) + self._floor)
        return total

    def _prefill_attention(self, b: BatchShape, detail: bool = False):
        """Prefill (chunked) attention over all layers; sliding layers see at most `window` keys per query:
        pairs min(prefill_attn, tokens x W) and KV min(prefill_kv, seqs x W + tokens) (exact when every query
        is on one side of the window)."""
        pf, _, kv_tok, q_bytes, p_rate, p_bw, _, _ = self._attn
        toks, seqs = b.prefill_tokens, b.prefill_seqs
        total = flops = nbytes = bound_c = bound_m = 0.0
        for layers, window in self._groups:
            a, kv = b.prefill_attn, b.prefill_kv
            if window:
                a, kv = min(a, toks * window), min(kv, seqs * window + toks)
            tc = pf * a / p_rate
            by = kv * kv_tok + toks * q_bytes + a * self._score_bytes
            tm = by / p_bw
            body = max(tc, tm, kv * self._dq)
            total += layers * (body + self._pre_floor + self._pre_tok * toks)
            flops, nbytes = flops + layers * pf * a, nbytes + layers * by
            bound_c, bound_m = bound_c + tc, bound_m + tm
        if self._lin_layers:
            # chunked linear attention: the state recurrence per token, the fp32 state read and written per sequence
            tc = self._lin_flops * toks / p_rate
            tm = self._lin_state * seqs / p_bw
            total += self._lin_layers * (max(tc, tm) + self._floor)
            flops += self._lin_layers * self._lin_flops * toks
            nbytes += self._lin_layers * self._lin_state * seqs
            bound_c, bound_m = bound_c + tc, bound_m + tm
        if detail:
            return total, flops, nbytes, "compute" if bound_c >= bound_m else "memory"
        return total

    def decode_attention_time(self, seqs: int, ctx_sum):
        """Seconds of decode attention over all layers (a number, or a numpy array for an array `ctx_sum`):
        the term `step_time` and `decode_run_times` add for `seqs` decoding sequences of context sum `ctx_sum`."""
        if isinstance(ctx_sum, (int, float)):
            return self._decode_scalar(seqs, ctx_sum)
        import numpy as np
        return self._decode_attention(seqs, np.asarray(ctx_sum, dtype=np.float64), np)

