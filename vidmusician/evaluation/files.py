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
                log: Callable[[str], None] | None = None, tag: str = "",
                exclude: Iterable[Path] = ()) -> dict[str, Path]:
    """For each stem, the audio file of that stem in a folder.

    When a stem has several candidates the first suffix of
    :data:`AUDIO_SUFFIXES` wins (lossless before lossy before video).

    Args:
        stems: Stems to look for.
        directory: Folder to look in (not recursive).
        role: ``"generated"`` or ``"reference"``, for messages.
        log: Told which file is used for each stem that has several.
        tag: Also match ``STEM{tag}.*`` to ``STEM`` (the generated files:
            ``vidmusician generate`` names its outputs ``NAME_music.wav``).
        exclude: Files that are no candidates (the videos, when music was
            generated into their own folder).

    Returns:
        ``{stem: file}`` for the stems found.

    Raises:
        ConfigError: The folder is missing, or one stem has files of both
            names (``STEM.*`` and ``STEM{tag}.*``), or one file would match two
            stems.
    """
    directory = _existing_dir(directory, role)
    rank = {s: i for i, s in enumerate(AUDIO_SUFFIXES)}
    wanted = set(stems)
    excluded = {Path(p).resolve() for p in exclude}
    found: dict[str, dict[str, list[Path]]] = {}  # {stem: {the file's own stem: files}}
    for p in sorted(directory.iterdir()):
        if not (p.is_file() and p.suffix.lower() in rank) or (excluded and p.resolve() in excluded):
            continue
        owners = [s for s in (p.stem, p.stem[: -len(tag)] if tag and p.stem.endswith(tag) else None) if s in wanted]
        if len(owners) > 1:
            raise ConfigError(f"{p}: its name matches both {owners[0]} and {owners[1]} among the videos; "
                              f"rename it, or move one video's {role} file to another folder")
        for owner in owners:
            found.setdefault(owner, {}).setdefault(p.stem, []).append(p)
    best = {}
    for stem, by_name in found.items():
        if len(by_name) > 1:
            both = " and ".join(f"{name}.*" for name in sorted(by_name))
            raise ConfigError(f"{directory}: {both} both match the video {stem}; keep one of them in the "
                              f"{role} folder (move or rename the other)")
        (files,) = by_name.values()
        files.sort(key=lambda p: rank[p.suffix.lower()])
        best[stem] = files[0]
        if len(files) > 1 and log is not None:
            log(f"note: {stem}: scoring {files[0].name} of the {role} files "
                f"(also there: {', '.join(p.name for p in files[1:])})")
    return best


def without_audio(files: dict[str, Path]) -> list[str]:
    """The stems whose file holds no audio stream (a silent video given as reference music), sorted.

    A file that cannot be opened is not among them: reading it later says what is wrong with it.
    """
    import av

    silent = []
    for stem, path in files.items():
        try:
            with av.open(str(path)) as container:
                if not container.streams.audio:
                    silent.append(stem)
        except (OSError, av.FFmpegError):
            continue
    return sorted(silent)


def _existing_dir(directory: str | Path, role: str) -> Path:
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(f"{directory}: no such folder (--{role}); check the path")
    return directory
