"""Keep TensorFlow's, absl's and the TFLite converter's chatter off the user's terminal.

TensorFlow's C++ side (CUDA probes, "All log messages before absl::InitializeLog() is called
are written to STDERR", the converter's ``fully_quantize: 0, inference_type: 6`` lines) writes
straight to file descriptor 2, below Python, and some of it ignores ``TF_CPP_MIN_LOG_LEVEL``.
So besides the environment variables (set before TensorFlow is imported), :func:`quiet` points
fd 2 at a log file for the whole command while Python's ``sys.stderr`` keeps writing to the
terminal: tfsafe's own error lines and tracebacks still show, the C++ lines land in the log.
"""

import contextlib
import logging
import os
import sys
import tempfile
import warnings

from absl import logging as absl_logging  # absl only, no TensorFlow

__all__ = ["quiet", "set_log_env", "DivertedLog"]


class DivertedLog:
    """Where fd 2 went during :func:`quiet`; set ``keep`` to keep the file (e.g. on failure)."""

    def __init__(self, path):
        self.path, self.keep = path, False

_ENV = {
    "TF_CPP_MIN_LOG_LEVEL": "3",  # C++ INFO / WARNING / ERROR
    "TF_CPP_MIN_VLOG_LEVEL": "0",
    "GRPC_VERBOSITY": "ERROR",
    "GLOG_minloglevel": "3",
    "ABSL_MIN_LOG_LEVEL": "3",
    "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "0"),  # its notice is printed at import
}


def set_log_env(verbose):
    """Set the log-level variables TensorFlow reads at import (only when ``verbose < 2``)."""
    if verbose >= 2:
        return
    for key, value in _ENV.items():
        os.environ[key] = value
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


_LOGGERS = ("tensorflow", "absl", "h5py", "matplotlib", "tf2onnx")


@contextlib.contextmanager
def _python_loggers_quiet():
    """Python-side logs and warnings at ERROR for the body, restored afterwards (the CLI may
    run inside another program, e.g. a test session)."""
    levels = {name: logging.getLogger(name).level for name in _LOGGERS}
    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)
    for name in _LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        absl_logging.set_verbosity(verbosity)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


@contextlib.contextmanager
def quiet(verbose, log_dir=None):
    """Run the body with TensorFlow / absl / converter logs diverted (``verbose < 2``).

    Yields a :class:`DivertedLog` (path None when nothing was diverted). The file is deleted
    afterwards unless the body raised or set ``keep``; then its path is printed, since it may
    explain the failure.
    """
    set_log_env(verbose)
    if verbose >= 2:
        yield DivertedLog(None)
        return
    with _python_loggers_quiet(), _divert_fd2(log_dir) as diverted:
        yield diverted


@contextlib.contextmanager
def _divert_fd2(log_dir=None):
    try:
        terminal_is_fd2 = sys.stderr is not None and sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):  # e.g. pytest's capture object
        terminal_is_fd2 = False
    sys.stderr.flush()
    fd, log_path = tempfile.mkstemp(prefix="tfsafe-", suffix=".log", dir=log_dir)
    saved = os.dup(2)
    old_stderr = sys.stderr
    if terminal_is_fd2:
        sys.stderr = os.fdopen(os.dup(saved), "w", buffering=1, encoding=old_stderr.encoding,
                               errors="backslashreplace")
    os.dup2(fd, 2)
    diverted = DivertedLog(log_path)
    try:
        yield diverted
    except BaseException:
        diverted.keep = True
        raise
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(fd)
        if terminal_is_fd2:
            sys.stderr.flush()
            sys.stderr.close()
            sys.stderr = old_stderr
        if diverted.keep and os.path.getsize(log_path):
            print(f"tfsafe: TensorFlow's own messages are in {log_path}", file=sys.stderr)
        else:
            os.remove(log_path)
