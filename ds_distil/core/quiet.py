"""Third-party console noise a user cannot act on, silenced unless `--verbose`:

- DeepSpeed's log (e.g. "Attempting to get learning rate from scheduler before it has started",
  printed by its own initialisation) and the "op ... built successfully" line it prints on stdout
  when it loads its CPU communication op;
- transformers' weight-loading report (the MISSING/UNEXPECTED key table, replaced by our one-line
  summary in finetune) and its progress bars ("Loading weights", "Writing model shards");
- datasets' progress bars and info lines;
- Python warnings raised inside those libraries (FutureWarning/DeprecationWarning/UserWarning);
- the traceback of TensorBoard's event-writer thread when a write fails (a full disk, a path too long): the writer
  hands the same error to the main thread's next write, which the CLI reports in one line; a warning line says it here.

Errors are never hidden: the loggers stay at ERROR, and output swallowed around a call is printed
if that call fails.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import threading
import warnings

VERBOSE = False
_LIBRARIES = ("deepspeed", "transformers", "datasets", "torch", "huggingface_hub")


class _ErrorsOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


_ERRORS_ONLY = _ErrorsOnly()


def configure(verbose: bool) -> None:
    """Call once, before the libraries log anything (cli.main does)."""
    global VERBOSE
    VERBOSE = verbose
    if verbose:
        return
    # DeepSpeed sets its logger's level when it is imported, so a level set now would be undone; a filter stays
    logging.getLogger("DeepSpeed").addFilter(_ERRORS_ONLY)
    for name in ("datasets", "huggingface_hub", "torch.utils.cpp_extension"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for category in (FutureWarning, DeprecationWarning, UserWarning):
        for lib in _LIBRARIES:
            warnings.filterwarnings("ignore", category=category, module=rf"{lib}(\.|$)")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # also for the ranks a launcher starts from here
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    import transformers.utils.logging as tf_logging  # ~0.8 s; transformers' own switches need it imported

    tf_logging.set_verbosity_error()
    tf_logging.disable_progress_bar()  # "Loading weights", "Writing model shards"; hub downloads keep theirs
    quiet_writer_threads()


def quiet_writer_threads() -> None:
    """A failed write in TensorBoard's event-writer thread as one warning line instead of the thread's traceback."""
    default = threading.excepthook

    def hook(args) -> None:
        if type(args.thread).__name__ == "_AsyncWriterThread" and isinstance(args.exc_value, OSError):
            from ds_distil.core.errors import os_error_line

            logging.getLogger("ds_distil").warning("TensorBoard's event writer stopped: %s", os_error_line(args.exc_value))
            return
        default(args)

    threading.excepthook = hook


@contextlib.contextmanager
def third_party_stdout():
    """Swallow what a third-party call prints on stdout (unless --verbose); show it if the call fails."""
    if VERBOSE:
        yield
        return
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            yield
    except BaseException:
        sys.stderr.write(buf.getvalue())
        raise
