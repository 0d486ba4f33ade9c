"""``StageFailed``: a stage's own one-line verdict that its run is broken (not a crash; the
runner keeps the records it measured). Defined on the foundation floor so the domain libraries a
stage calls (the LoRA merge in engine/models/lora.py) can give that verdict; kinds import it from
the stage SDK (engine.sdk.base)."""


class StageFailed(Exception):
    """A stage's own verdict that its run is broken (not a crash)."""
