"""The run folder and its checkpoints: atomic saves and exact resume (checkpoint, resume), the Hugging Face folder
written tensor by tensor (hf_shards), one run per folder (run_lock), and exports of finished runs (export)."""
