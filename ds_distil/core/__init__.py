"""The floor: the config library, errors, file and process helpers, run directories. Imports nothing of ours above it."""
