"""The command line: the training flags and their checks (args), the LLR flags (lr) and the Muon flags (muon)."""
