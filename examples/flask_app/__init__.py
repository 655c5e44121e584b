"""The Flask example: see README.md in this directory."""
