"""The vLLM backend (optional: only when ``vllm`` is installed), behind the same interface.

Each (request, sample) goes to vLLM as its own sequence with its own seed, derived
exactly as the transformers backend derives it, so a sample does not depend on its
batch; prefix caching makes the N sequences of a prompt share its prefill.
"""

from __future__ import annotations

from pathlib import Path

from engine.gen.base import GenOutput, GenRequest
from engine.gen.sampling import sample_key


class VLLMBackend:
    name = "vllm"

    def __init__(self, model_dir: Path, device: str = "auto", dtype: str = "auto", *,
                 gpu_memory_utilization: float = 0.85) -> None:
        try:
            from vllm import LLM
        except ImportError:
            raise RuntimeError("generation backend 'vllm' requested but vllm is not installed "
                               "(pip install vllm, or use backend: transformers)") from None
        import torch

        if device not in ("auto", "cuda") and not device.startswith("cuda"):
            raise ValueError(f"the vllm backend runs on CUDA only, not device {device!r}")
        if not torch.cuda.is_available():
            raise RuntimeError("the vllm backend needs CUDA, and torch.cuda.is_available() is False")
        self.llm = LLM(model=str(model_dir), dtype=dtype, enable_prefix_caching=True,
                       gpu_memory_utilization=gpu_memory_utilization)
        self.tokenizer = self.llm.get_tokenizer()
        self.device = f"cuda:{torch.cuda.current_device()}"
        # vLLM adds generation_config's EOS itself; these are the tokenizer's and Qwen's terminators.
        ids = {self.tokenizer.eos_token_id}
        vocab = self.tokenizer.get_vocab()
        ids |= {vocab[t] for t in ("<|im_end|>", "<|endoftext|>") if t in vocab}
        self.stop_ids = sorted(i for i in ids if i is not None)

    def encode(self, prompt: str) -> list[int]:
        return self.tokenizer(prompt, add_special_tokens=False)["input_ids"]

    def generate(self, requests: list[GenRequest]) -> list[GenOutput]:
        from vllm import SamplingParams

        prompts, params, owners = [], [], []
        for ri, r in enumerate(requests):
            ids = self.encode(r.prompt)
            for j in range(r.n):
                prompts.append({"prompt_token_ids": ids})
                params.append(SamplingParams(
                    n=1, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k if r.top_k > 0 else -1,
                    max_tokens=r.max_new_tokens, seed=sample_key(r.seed, j) & 0x7FFFFFFF,
                    stop_token_ids=self.stop_ids, stop=list(r.stop) or None, skip_special_tokens=True))
                owners.append(ri)
        outs = [GenOutput(r.request_id, [], [], []) for r in requests]
        for ri, res in zip(owners, self.llm.generate(prompts, params, use_tqdm=False), strict=True):
            c = res.outputs[0]
            outs[ri].texts.append(c.text)
            outs[ri].token_counts.append(len(c.token_ids))
            outs[ri].finish_reasons.append("stop" if c.finish_reason == "stop" else "length")
        return outs
