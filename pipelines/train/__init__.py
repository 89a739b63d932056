"""Pretraining glue: typed config, FSDP2 parallelisation, data stream, loop, checkpoints, monitor and run log.

``pipelines/pretrain.py`` composes these; each module is importable and tested without Ray.
"""
