"""The transformers backend: loads a checkpoint with transformers, samples with SlotEngine.

Stop tokens come from the tokenizer, the model config and generation_config (Qwen:
151643 ``<|endoftext|>`` and 151645 ``<|im_end|>``). ``device`` reports where the
weights actually are after loading, never what was asked for.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from pathlib import Path

import torch

from engine.gen.base import GenOutput, GenRequest, cut_at_stop
from engine.gen.engine import Seq, SlotEngine
from engine.gen.sampling import sample_key


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but torch.cuda.is_available() is False")
    return device


def load_dtype(dtype: str, device: str) -> torch.dtype:
    """The dtype a model is loaded in for compute: ``auto`` is bfloat16 on CUDA, float32 elsewhere."""
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    try:
        return {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16,
                "fp16": torch.float16, "float32": torch.float32, "fp32": torch.float32}[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r} (expected auto, bfloat16, float16 or float32)") from None


def _ids(value: int | Iterable[int] | None) -> set[int]:
    if value is None:
        return set()
    if isinstance(value, int):
        return {value}
    return {int(v) for v in value}


def stop_token_ids(tokenizer, model) -> list[int]:
    """EOS ids of the tokenizer, config and generation config, plus Qwen's chat terminators."""
    ids = _ids(tokenizer.eos_token_id) | _ids(getattr(model.config, "eos_token_id", None))
    gen_cfg = getattr(model, "generation_config", None)
    if gen_cfg is not None:
        ids |= _ids(gen_cfg.eos_token_id)
    vocab = tokenizer.get_vocab()
    ids |= {vocab[t] for t in ("<|im_end|>", "<|endoftext|>") if t in vocab}
    return sorted(ids)


class HFBackend:
    """Batched greedy/sampled generation; the N samples of a request share one prefill."""

    name = "transformers"

    def __init__(self, model_dir: Path, device: str = "auto", dtype: str = "auto", *, max_rows: int = 256,
                 cuda_graphs: bool | None = None, sync_every: int | None = None, ignore_eos: bool = False,
                 model=None, tokenizer=None) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from engine.random_source import is_random_source
        from engine.rehearsal import materialise

        dev = resolve_device(device)
        self.tokenizer = tokenizer or AutoTokenizer.from_pretrained(model_dir)
        model_loaded_here = model is None
        if model_loaded_here:
            # Straight onto the device when accelerate is there (transformers needs it for device_map):
            # no transient CPU copy of the weights, which unified memory would count twice.
            direct = dev != "cpu" and importlib.util.find_spec("accelerate") is not None
            if is_random_source(model_dir):  # a rehearsal's teacher: weights drawn on the device
                model = materialise(model_dir, dev, load_dtype(dtype, dev))
            else:
                model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=load_dtype(dtype, dev),
                                                             device_map=dev if direct else None)
            model.to(dev)
        self.model = model.eval()
        # A model loaded here only generates: its q|k|v and gate|up weights are concatenated in
        # place (one wider GEMM each, no extra memory). A model passed in is left as it is.
        self.fuse = model_loaded_here and SlotEngine.can_fuse(self.model)
        self.device = str(next(self.model.parameters()).device)
        self.stop_ids = stop_token_ids(self.tokenizer, self.model)
        self.max_rows = max_rows
        on_cuda = self.device.startswith("cuda")
        self.cuda_graphs = on_cuda if cuda_graphs is None else cuda_graphs
        self.sync_every = sync_every or (4 if on_cuda else 1)
        self.ignore_eos = ignore_eos
        self._engine: SlotEngine | None = None

    def _engine_for(self, rows: int, max_len: int) -> SlotEngine:
        """Reuse the engine (cache, captured graphs) for the same row count: the batch shape, and so
        the numerics of every row, depend only on the request set, never on what ran before."""
        e = self._engine
        if e is not None and e.rows == rows and e.max_len >= max_len:
            return e
        if e is not None:
            max_len = max(max_len, e.max_len)  # lengths vary by unit: never shrink, fewer recaptures
        self._engine = None  # free the old cache first
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()
        self._engine = SlotEngine(self.model, rows, max_len, self.stop_ids, cuda_graphs=self.cuda_graphs,
                                  sync_every=self.sync_every, ignore_eos=self.ignore_eos, fused=self.fuse,
                                  share_weights=self.fuse)
        return self._engine

    def encode(self, prompt: str) -> list[int]:
        """Token ids of a prompt exactly as sent (no special tokens added)."""
        return self.tokenizer(prompt, add_special_tokens=False)["input_ids"]

    def generate(self, requests: list[GenRequest]) -> list[GenOutput]:
        if not requests:
            return []
        seqs: list[Seq] = []
        for ri, r in enumerate(requests):
            ids = self.encode(r.prompt)
            if not ids:
                raise ValueError(f"request {r.request_id}: empty prompt")
            for j in range(r.n):
                seqs.append(Seq(ri, j, ids, r.max_new_tokens, r.temperature, r.top_p, r.top_k, sample_key(r.seed, j)))
        rows = min(self.max_rows, len(seqs))
        max_len = max(len(s.prompt_ids) + s.max_new for s in seqs)
        with torch.inference_mode():
            self._engine_for(rows, max_len).run(seqs)
        outs = [GenOutput(r.request_id, [], [], []) for r in requests]
        stops = set(self.stop_ids)
        for s in seqs:
            o = outs[s.req]
            body = s.tokens[:-1] if s.finish == "stop" and s.tokens and s.tokens[-1] in stops else s.tokens
            text, hit = cut_at_stop(self.tokenizer.decode(body, skip_special_tokens=True), requests[s.req].stop)
            o.texts.append(text)  # a stop string cuts the text after generation (the count is not cut)
            o.token_counts.append(len(s.tokens))
            o.finish_reasons.append("stop" if hit else s.finish)
        return outs
