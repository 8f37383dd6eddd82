"""The typed configurations of every command and their help: no torch, so `--help` answers at once."""
