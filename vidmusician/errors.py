"""The project's exceptions.

Every error a user can cause derives from :class:`VidMusicianError`; its message
is one line that names the input and the fix. The CLI prints that line and exits
with status 2, never a traceback.
"""


class VidMusicianError(Exception):
    """Base class of the errors a user can cause."""


class ConfigError(VidMusicianError, ValueError):
    """A configuration or argument is invalid."""


class VideoError(VidMusicianError):
    """A video file cannot be used (missing, unreadable, no video stream, ...)."""


class AudioError(VidMusicianError):
    """An audio file cannot be used."""


class AdapterError(VidMusicianError):
    """An adapter folder is missing, corrupt, or does not match the backbone."""


class BackboneError(VidMusicianError):
    """A backbone cannot be loaded or is not supported."""


class DataError(VidMusicianError):
    """A prepared dataset is missing or inconsistent."""


def os_error_line(exc: OSError) -> str:
    """One line for a file-system failure: the path, what the system said, and what to do."""
    import errno

    path = short_path(exc.filename) if exc.filename is not None else ""
    fixes = {
        errno.ENOSPC: "the disk is full; free space or write elsewhere (earlier outputs were left intact)",
        errno.EDQUOT: "the disk quota is exceeded; free space or write elsewhere",
        errno.EROFS: "the file system is read-only; choose a writable folder",
        errno.EACCES: "permission denied; choose a folder you can write to",
        errno.EPERM: "operation not permitted; choose a folder you can write to",
        errno.ENAMETOOLONG: "the file name is too long for this file system; use a shorter name",
        errno.ENOTDIR: "a part of this path is a file, not a folder",
        errno.EISDIR: "this is a folder; give a file name",
        errno.EEXIST: "this already exists and is in the way",
        errno.ENOENT: "no such file or folder",
    }
    what = fixes.get(exc.errno, exc.strerror or type(exc).__name__)
    return f"{path}: {what}" if path else what


def short_path(path, limit: int = 120) -> str:
    """A path for a message: long ones (a 300-character name) keep their start and end."""
    text = str(path)
    return text if len(text) <= limit else f"{text[:limit // 2]}...{text[-(limit // 3):]}"
