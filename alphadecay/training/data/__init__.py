"""Text to batches: local files or hub datasets (text_sources), tokenised (encode), packed or padded and split over
ranks and workers (batches, workers), and the fixed validation set (eval_data)."""
