"""Parallelism applied to the model from outside: the process group and device (runtime), DDP or FSDP2 with compile
(wrap), the model built on the meta device and materialised shard by shard (meta_init), precision modes (precision)."""
