"""Hardware targets: the classes and boards edgepilot knows, host detection, and variant selection."""
