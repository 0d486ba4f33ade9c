"""The stage SDK: the API a stage kind is written against (``base``), the runners that execute
a job file (``run``: one process; ``launch``: N torchrun ranks) and the train loop the trainer
kinds share (``train``). The kinds themselves live in ``engine/stages/``."""
