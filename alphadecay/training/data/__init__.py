"""Text to batches: local files or hub datasets (text_sources, read through transient errors: retry), tokenised
(encode), packed or padded and split over ranks and workers (batches, workers), and the fixed validation set
(eval_data). Or tokenized once (prepare, ``alphadecay prepare-data``) into a folder (prepared) read by global
sample index (tokens; select picks it for a run)."""
