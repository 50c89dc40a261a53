class ConfigError(ValueError):
    """Bad user input. The message is one line that names the problem and the fix."""
