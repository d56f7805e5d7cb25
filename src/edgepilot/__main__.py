"""`python -m edgepilot` runs the CLI (as the `edgepilot` script does)."""
from edgepilot.cli import main

main()
