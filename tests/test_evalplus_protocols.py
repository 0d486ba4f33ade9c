"""Protocols as named, versioned objects: ids, digests, pins, overrides, diffs, evalplus's prompts."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.data import pins, postprocess, prompts, protocols


def test_the_four_protocols_and_their_pins() -> None:
    assert set(protocols.PROTOCOLS) == {"humaneval", "humaneval_plus", "mbpp_leaderboard", "mbpp_plus"}
    sizes = {p.id: (p.dataset, p.n_tasks, p.task_range(), p.plus) for p in protocols.PROTOCOLS.values()}
    assert sizes == {"humaneval": ("humaneval", 164, None, False), "humaneval_plus": ("humaneval_plus", 164, None, True),
                     "mbpp_leaderboard": ("mbpp", 500, (11, 510), False), "mbpp_plus": ("mbpp_plus", 378, None, True)}
    for p in protocols.PROTOCOLS.values():
        pin = pins.pin_for(p.dataset)
        assert p.data_sha256 == pin.sha256 and p.accepts_data(pin.decompressed_sha256 or pin.sha256)
        assert p.as_dict()["id"] == p.id and len(p.digest()) == 64 and p.data_pinned_by == "project"
        assert (p.n, p.temperature, p.max_new_tokens, p.min_time_limit_s, p.gt_time_factor) == (1, 0.0, 768, 1.0, 4.0)
    assert len({p.digest() for p in protocols.PROTOCOLS.values()}) == 4


def test_resolve_overrides_pins_and_diff() -> None:
    official = protocols.get("humaneval_plus")
    assert protocols.resolve("humaneval_plus") == official
    assert protocols.resolve("humaneval_plus", data_sha256=official.data_sha256_decompressed) == official
    assert protocols.resolve("humaneval_plus", overrides={"temperature": 0}).digest() == official.digest()
    changed = protocols.resolve("humaneval_plus", overrides={"max_new_tokens": 512, "temperature": 0.2})
    assert changed.digest() != official.digest()
    assert protocols.diff(official.as_dict(), changed.as_dict()) == ["max_new_tokens 768 -> 512", "temperature 0.0 -> 0.2"]
    user = protocols.resolve("humaneval_plus", data_sha256="a" * 64)
    assert user.as_dict()["data_pinned_by"] == "user" and user.digest() != official.digest()
    for kwargs, needle in (({"overrides": {"n": "3"}}, "must be a int"), ({"overrides": {"tests": "check"}}, "cannot"),
                           ({"overrides": {"prompt_mode": "chat"}}, "auto, base or instruct"),
                           ({"data_sha256": "xyz"}, "64 lowercase hex")):
        with pytest.raises(ValueError, match=needle):
            protocols.resolve("mbpp_plus", **kwargs)
    with pytest.raises(ValueError, match="did you mean 'mbpp_plus'"):
        protocols.get("mbpp+")


def test_prompts_are_evalplus_codegen_text(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    p = protocols.get("humaneval_plus")
    task = 'def f(x):\n    """Return x."""\n\n'
    chat = prompts.for_protocol(p, task, tok)
    assert chat.chat and chat.text.endswith(f"{p.response_prefix}\n```python\n")
    assert f"{p.instruction_prefix}\n```\n{task.strip()}\n```\n" in chat.text
    base = prompts.for_protocol(protocols.resolve(p.id, overrides={"prompt_mode": "base"}), task, tok)
    assert not base.chat and base.text == task.strip() + "\n"
    tok.chat_template = None
    assert prompts.for_protocol(p, task, tok).text == base.text  # no template: a base model, as evalplus
    with pytest.raises(ValueError, match="no chat template"):
        prompts.for_protocol(protocols.resolve(p.id, overrides={"prompt_mode": "instruct"}), task, tok)
    # a base model's text: cut at the first stop string, tabs to spaces, the prompt in front, sanitized
    raw = "\treturn x\n\ndef g():\n    return 2\nprint(f(1))"
    assert postprocess.evalplus_solution(raw, prompt=base.text, stops=p.stop_base, entry_point="f") == \
        'def f(x):\n    """Return x."""\n    return x'
