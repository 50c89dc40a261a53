"""The command line: the training flags and their checks (args), the LLR flags (lr), the Muon flags (muon), the rule
for the flags of a feature that is off (features) and the checks they share (checks)."""
