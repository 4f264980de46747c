"""What can go wrong, as the user sees it, and the one place other libraries' errors are translated.

- ``UserInputError`` (exit code 2): the user gave us something wrong: a config
  value, a data file, a model path, arguments, a run directory in an odd state.
- ``RunFailure`` (exit code 1): the run cannot go on for a reason outside the
  input (a judge that stopped answering, a full disk, a damaged stage file);
  finished stages are kept and ``iterpo resume`` continues once it is fixed.
- Anything else that escapes is a bug (exit code 1, with its traceback).

Messages are one paragraph that names the field, file or line at fault.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class UserInputError(Exception):
    """Invalid input: config values, data files, model paths, arguments."""


class ConfigError(UserInputError):
    """A config file or override is invalid."""


class DataError(UserInputError):
    """A prompt or preference file is missing or malformed."""


class RunDirError(UserInputError):
    """A run directory cannot be used (missing, in use, damaged, or made with another config)."""


class RunFailure(Exception):
    """The run stopped for a reason outside the input; what is finished is kept, and a resume continues."""


class DiskFull(RunFailure):
    """A write failed for lack of space; nothing partial was left behind."""


class JudgeFailure(RunFailure):
    """A judge failed systematically (unreachable, or too many failed verdicts in one stage)."""


class DamagedFile(RunFailure):
    """A stored file does not match the checksum recorded when it was written, and cannot be recomputed."""


@contextmanager
def reading(what: str, path: str | Path, error: type[UserInputError] = DataError) -> Iterator[None]:
    """Turn any failure to read ``path`` into ``error`` naming ``what`` and the path.

    ``what`` is how the user knows the file ("config file", "model.path",
    "prompt file"). Used around every read of user-supplied paths and of the
    run directory, so other libraries' exceptions (JSON, YAML, Unicode, Arrow,
    safetensors, transformers) never reach the user as a traceback.
    """
    try:
        yield
    except UserInputError:
        raise
    except FileNotFoundError:
        raise error(f"{what}: {path} does not exist") from None
    except IsADirectoryError:
        raise error(f"{what}: {path} is a directory, not a file") from None
    except NotADirectoryError:
        raise error(f"{what}: {path} (or a folder above it) is not a directory") from None
    except PermissionError:
        raise error(f"{what}: {path} cannot be read (permission denied)") from None
    except UnicodeDecodeError as exc:
        raise error(f"{what}: {path} is not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise error(f"{what}: {path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except RecursionError:
        raise error(f"{what}: {path} is nested too deeply to read") from None
    except MemoryError:
        raise error(f"{what}: {path} is too large to read into memory") from None
    except OSError as exc:
        raise error(f"{what}: {path} cannot be read: {exc.strerror or exc}") from None
    except Exception as exc:
        # The libraries that parse model, tokenizer, GGUF, safetensors and Arrow files raise exceptions of their own
        # (ValueError, KeyError, SafetensorError, ArrowInvalid, ...) for malformed content.
        detail = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise error(f"{what}: {path} cannot be read ({type(exc).__name__}: {detail})") from None
