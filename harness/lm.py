"""lm-eval's HFLM, with the shared few-shot prefix computed once (`hf-prefix-reuse`).

The teacher arm scores every held-out item behind the same instruction and demonstrations; plain
HFLM runs that context again for every request. This subclass prefills the prefix the requests
share once, keeps its KV cache, and runs only each request's own tokens on top of it, for both
`generate_until` and `loglikelihood`. Where `shared_prefix` supports the model, every row attends to that
one batch-1 cache (`generation._prefix_cache`, as `generation.generate` does: no per-row copy of a 4k-token
prefix); otherwise it is copied into each row. lm-eval stays the scorer: request building, batching, stop
sequences, answer extraction and metrics are HFLM's own code; only the two model calls change.
When the requests share no usable prefix (or a row was truncated), the plain call runs.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any

import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

from harness import generation, softprompt


class QuietHFLM(HFLM):
    """HFLM whose progress bars show only on a terminal: lm-eval passes `disable_tqdm=False` explicitly, so
    neither tqdm's terminal check nor its TQDM_DISABLE default reach these bars, and a log file got one
    redrawn line per request batch."""

    def loglikelihood(self, requests: Any, disable_tqdm: bool = False) -> Any:
        return super().loglikelihood(requests, disable_tqdm=disable_tqdm or not sys.stderr.isatty())

    def loglikelihood_rolling(self, requests: Any, disable_tqdm: bool = False) -> Any:
        return super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm or not sys.stderr.isatty())

    def generate_until(self, requests: Any, disable_tqdm: bool = False) -> Any:
        return super().generate_until(requests, disable_tqdm=disable_tqdm or not sys.stderr.isatty())


@register_model("hf-prefix-reuse")
class PrefixReuseLM(QuietHFLM):
    """HFLM whose model calls reuse the KV cache of the prefix every request shares."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ll_prefix: list[int] | None = None
        self._kv: tuple[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] | None = None
        self.prefix_hits = 0  # model calls that ran on a reused prefix (for tests and logs)

    # --- the shared prefix's KV cache, one at a time ----------------------------------------------------
    def _prefix_kv(self, prefix: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        key = tuple(prefix)
        if self._kv is None or self._kv[0] != key:
            with self._precision():
                self._kv = (key, generation._prefill(self.model, prefix))
        return self._kv[1]

    def _precision(self) -> contextlib.AbstractContextManager:
        """The same autocast HFLM wraps its own model calls in."""
        return torch.autocast(
            device_type=self.device.type,
            dtype=self.mixed_precision_dtype,
            enabled=self.mixed_precision_dtype is not None,
        )

    # --- generate_until ------------------------------------------------------------------------------
    def _model_generate(self, context: torch.Tensor, max_length: int, stop: list[str], **kwargs: Any) -> torch.Tensor:
        """[prefix | left-padded own tokens] with the prefix's cache; same width, so HFLM's slicing holds."""
        mask = kwargs.get("attention_mask")
        if self.backend != "causal" or mask is None or softprompt.active(self.model):
            return super()._model_generate(context, max_length, stop, **kwargs)
        rows = [context[i][mask[i].bool()].tolist() for i in range(context.shape[0])]
        p = generation._usable_prefix(rows, True)
        if p == 0:
            return super()._model_generate(context, max_length, stop, **kwargs)
        ids, new_mask = generation._batch_inputs(rows, p, self.tokenizer.pad_token_id or 0, context.device)
        if ids.shape != context.shape:
            return super()._model_generate(context, max_length, stop, **kwargs)
        kwargs["attention_mask"] = new_mask
        cache = generation._prefix_cache(self.model, self._prefix_kv(rows[0][:p]), len(rows))
        kwargs["past_key_values"] = cache
        self.prefix_hits += 1
        with generation._attending(self.model, cache):
            return super()._model_generate(ids, max_length, stop, **kwargs)

    # --- loglikelihood -------------------------------------------------------------------------------
    def _loglikelihood_tokens(self, requests: list, disable_tqdm: bool = False, override_bs: int | None = None) -> list:
        """Find the prefix every request's context shares (each keeps ≥ 1 own context token), then score."""
        if self.backend == "causal" and not softprompt.active(self.model):
            p = generation._usable_prefix([r[1] for r in requests], True)
            self._ll_prefix = list(requests[0][1][:p]) if p else None
        try:
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        finally:
            self._ll_prefix = None

    def _model_call(
        self, inps: torch.Tensor, attn_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits of the positions after the prefix only, [B, L − P, V].

        HFLM locates each continuation from the end of the returned logits (`ctx_len = inplen +
        logits.shape[0] − padding_len`), and every continuation is predicted from past the prefix
        (each context keeps a token of its own), so the dropped positions are never read.
        """
        prefix = self._ll_prefix
        if (
            not prefix
            or attn_mask is not None
            or inps.shape[1] <= len(prefix)
            or not torch.equal(
                inps[:, : len(prefix)], torch.tensor(prefix, device=inps.device).expand(inps.shape[0], -1)
            )
        ):
            return super()._model_call(inps, attn_mask=attn_mask, labels=labels)
        p = len(prefix)
        cache = generation._prefix_cache(self.model, self._prefix_kv(prefix), inps.shape[0])
        self.prefix_hits += 1
        with torch.no_grad(), self._precision(), generation._attending(self.model, cache):
            return self.model(input_ids=inps[:, p:], past_key_values=cache, use_cache=True).logits
