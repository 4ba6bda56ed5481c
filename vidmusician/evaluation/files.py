"""The files an evaluation compares, matched by stem across folders."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

from ..errors import ConfigError
from ..video.reader import VIDEO_SUFFIXES

# Preference order when one stem has several audio files: lossless first.
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".m4a", ".aac") + VIDEO_SUFFIXES


def list_videos(directory: str | Path) -> dict[str, Path]:
    """Videos in a folder (not recursive), by stem.

    Raises:
        ConfigError: The folder is missing or holds no video.
    """
    directory = _existing_dir(directory, "videos")
    found: dict[str, Path] = {}
    for p in sorted(directory.iterdir()):
        if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES:
            if p.stem in found:
                # Generated files are matched by stem: two videos of one stem are ambiguous.
                raise ConfigError(f"{p}: has the same name as {found[p.stem].name}; rename one of them")
            found[p.stem] = p
    if not found:
        raise ConfigError(f"{directory}: no video files ({', '.join(VIDEO_SUFFIXES)}); pass the folder of input videos")
    return found


def match_audio(stems: Iterable[str], directory: str | Path, role: str,
                log: Callable[[str], None] | None = None) -> dict[str, Path]:
    """For each stem, the audio file of that stem in a folder.

    When a stem has several candidates the first suffix of
    :data:`AUDIO_SUFFIXES` wins (lossless before lossy before video).

    Args:
        stems: Stems to look for.
        directory: Folder to look in (not recursive).
        role: ``"generated"`` or ``"reference"``, for messages.
        log: Told which file is used for each stem that has several.

    Returns:
        ``{stem: file}`` for the stems found.

    Raises:
        ConfigError: The folder is missing.
    """
    directory = _existing_dir(directory, role)
    rank = {s: i for i, s in enumerate(AUDIO_SUFFIXES)}
    wanted = set(stems)
    found: dict[str, list[Path]] = {}
    for p in sorted(directory.iterdir()):
        if p.is_file() and p.stem in wanted and p.suffix.lower() in rank:
            found.setdefault(p.stem, []).append(p)
    best = {}
    for stem, files in found.items():
        files.sort(key=lambda p: rank[p.suffix.lower()])
        best[stem] = files[0]
        if len(files) > 1 and log is not None:
            log(f"note: {stem}: scoring {files[0].name} of the {role} files "
                f"(also there: {', '.join(p.name for p in files[1:])})")
    return best


def _existing_dir(directory: str | Path, role: str) -> Path:
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(f"{directory}: no such folder (--{role}); check the path")
    return directory
