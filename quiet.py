"""A quiet start: TensorFlow's C++ start-up notices kept off the terminal, its other messages kept.

TensorFlow 2.21 writes its start-up notices (oneDNN being on, the CPU's
instruction sets, absl's "All log messages before absl::InitializeLog() ...")
straight to the process's standard error from C++ while it loads, whatever
`TF_CPP_MIN_LOG_LEVEL` says, and a student reads an `E0000` line among them as
an error. `import_keras()` imports Keras (and with it the backend) with file
descriptor 2 sent to a temporary file, then writes back every line of it that
is not one of `NOTICES`: a warning that matters (a GPU found but unusable, a
library missing) still shows. It also sets `TF_CPP_MIN_LOG_LEVEL` to 3 unless the
user set it, which silences TensorFlow's C++ logging after the import.

Only the command-line entry points call it; as a library the project leaves
the process's logging alone.
"""

import os
import re
import sys
import tempfile

# The start-up lines that say nothing a user can act on.
NOTICES = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called"
    r"|oneDNN custom operations are on"
    r"|This TensorFlow binary is optimized to use available CPU instructions"
    r"|To enable the following instructions:"
    r"|oneDNN supports DT_INT64 only"
    r"|Unable to register cu(DNN|FFT|BLAS) factory"
    r"|computation placer already registered"
)
QUIET_LOG_LEVEL = "3"


def import_keras():
    """Imports and returns `keras` with TensorFlow's start-up notices filtered out of standard error."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", QUIET_LOG_LEVEL)
    if "keras" in sys.modules:
        return sys.modules["keras"]
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import keras
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode(errors="replace").splitlines(keepends=True) if not NOTICES.search(line)]
            sys.stderr.write("".join(kept))
            sys.stderr.flush()
    return keras
