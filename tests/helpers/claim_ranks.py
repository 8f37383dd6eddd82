"""Every rank claims --out through rank 0 (ds_distil.core.rundir.claim_on_rank0) and prints what it got:
the directory to write, or rank 0's refusal as its own one-line error."""

import os
import sys

from ds_distil.cli import setup_logging
from ds_distil.core.errors import UserError
from ds_distil.core.rundir import claim, claim_on_rank0
from ds_distil.runtime.engine import close_distributed, init_distributed

setup_logging()  # each rank's line of where it runs, on stderr
d = init_distributed()
try:
    rd = claim_on_rank0(d.rank, lambda: claim(sys.argv[1], "distill", in_place=True))
    line = f"rank {d.rank} writes {rd.path}\n"
except UserError as e:
    line = f"rank {d.rank} refused: {e}\n"
# one write(2) per line: both ranks share the pipe, and with PYTHONUNBUFFERED print() writes the text
# and its newline separately, so two ranks' lines could interleave
os.write(1, line.encode())
close_distributed()  # every rank waits for the others, then the group goes: no gloo abort at exit (status -6)
