"""Files, written so that nothing a user saved is ever half-written or lost, and read with one-line errors.

Every layer writes through here: checkpoints, configs, metrics, caches, datasets' manifests.

- `atomic_write(path, write)`: `write(tmp_path)` fills a temporary file beside `path`; the file is flushed to disk
  (fsync), renamed over `path` in one step (os.replace), and the folder is synced too, so after a crash or a power
  cut `path` holds either the old content or the new one, never a mix. Files get the usual permissions (the umask),
  not the 0600 of a bare temporary file. If writing fails (a full disk, say), the temporary file is removed, `path`
  is untouched and the error says what happened.
- `remove_stale_temporaries(folder)`: a process killed with SIGKILL cannot clean up; the next run removes the
  `*.tmp` files such a kill left.
- `read_json(path, what, fix)`: a dict from a JSON file, or one clear error.
- `load_state_strict(module, state, source)`: weights into a module, every key and shape checked first.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import torch

TMP_SUFFIX = ".tmp"


class FileError(ValueError):
    """A file that cannot be read or written; the message names the file and what to do."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:            # some systems cannot open a folder; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Write `path` atomically: write(tmp) fills a temporary file in the same folder, which then replaces `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}{TMP_SUFFIX}")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) or type(e).__name__ == "SafetensorError":
            raise FileError(f"could not write {path} ({type(e).__name__}: {e}); the previous file, if any, is "
                            f"unchanged; free disk space or choose a writable folder, then run again") from None
        raise
    _fsync_folder(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | Path, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Remove the temporary files that an interrupted atomic_write left in `folder` (not in subfolders)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.iterdir() if p.is_file() and p.name.endswith(TMP_SUFFIX)]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def read_json(path: str | Path, what: str = "file", fix: str = "re-create it") -> dict:
    """A JSON object from `path`; a missing file, bad JSON or another type than an object is one clear error.

    what: what the file is, in words ("the run's config"); fix: what the user should do about a bad one."""
    path = Path(path)
    if not path.is_file():
        raise FileError(f"{what} {path} does not exist; {fix}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FileError(f"{what} {path} is not valid JSON ({e}); {fix}") from None
    if not isinstance(data, dict):
        raise FileError(f"{what} {path} holds a JSON {type(data).__name__}, not an object; {fix}")
    return data


def load_state_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str,
                      fix: str = "the weights and their config disagree") -> None:
    """Load `state` into `module` after checking every key, shape and value: one line names the first problem.

    Missing or extra keys, a tensor of another shape, integer values for a float parameter, or NaN/Inf values
    are refused; the module is left unchanged then."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise FileError(f"weights in {source} do not fit the model ({detail}); {fix}")
    for key, target in expected.items():
        value = state[key]
        if tuple(value.shape) != tuple(target.shape):
            raise FileError(f"weights in {source} do not fit the model (shape of {key} is {tuple(value.shape)}, "
                            f"expected {tuple(target.shape)}); {fix}")
        if target.is_floating_point() and not value.is_floating_point():
            raise FileError(f"weights in {source}: {key} holds {value.dtype} values where the model has a float "
                            f"parameter; {fix}")
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise FileError(f"weights in {source}: {key} holds NaN or Inf values; the file is damaged, or was "
                            f"saved from a run whose loss diverged; use an earlier copy")
    module.load_state_dict(state)
