"""The server process's garbage collector: keep it off the imported modules.

After every script run, a fragment's one-second poll included, Streamlit calls
`keras.backend.clear_session()` once Keras is imported (its `_clean_problem_modules`)
and `gc.collect(2)` (`runner.postScriptGC`). Both are full collections, and with
TensorFlow loaded the heap holds about 400,000 tracked objects, almost all of them
modules, classes and functions that live as long as the process: each poll cost
0.5-1 s of CPU, so a page watching a run took about a core from the training it
showed. `gc.freeze()` (the standard library's answer for long-lived start-up objects)
moves them to the permanent generation, which collections skip; objects made later
are collected as before.
"""
from __future__ import annotations

import gc
import sys

#: Freeze again once this many modules were imported since the last freeze (a page's
#: first visit importing Keras, scikit-learn or TFDS); a few times per server's life.
NEW_MODULES = 50

_modules_at_last_freeze = 0


def freeze_imported_modules() -> bool:
    """Move every object the collector tracks now into the permanent generation, when
    `NEW_MODULES` or more modules were imported since the last time. Call it at the end
    of a script run. Returns whether it froze."""
    global _modules_at_last_freeze
    if len(sys.modules) < _modules_at_last_freeze + NEW_MODULES:
        return False
    gc.collect()  # what is garbage now is freed, not frozen
    gc.freeze()
    _modules_at_last_freeze = len(sys.modules)
    return True
