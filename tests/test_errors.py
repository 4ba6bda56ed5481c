"""One line for any exception (vidmusician.errors.one_line), and the field-by-field difference line."""

import errno
import sys

import pytest

from vidmusician.errors import DataError, one_line


def test_project_error_is_its_message_also_from_a_dataloader_worker():
    from torch.utils.data._utils import ExceptionWrapper

    error = DataError("index.jsonl: line 3 is damaged; delete that line")
    assert one_line(error) == str(error)
    try:
        raise error
    except DataError:
        wrapped = ExceptionWrapper(sys.exc_info(), where="in DataLoader worker process 0")
    with pytest.raises(DataError) as raised:  # torch re-raises the type with its traceback as the text
        wrapped.reraise()
    assert "\n" in str(raised.value)
    assert one_line(raised.value) == "index.jsonl: line 3 is damaged; delete that line"


@pytest.mark.parametrize("exc, line", [
    (OSError(errno.ENOSPC, "No space left on device", "/runs/x/model.safetensors"),
     "/runs/x/model.safetensors: the disk is full; free space or write elsewhere (earlier outputs were left intact)"),
    (OSError(errno.ENOSPC, "No space left on device"),
     "the disk is full; free space or write elsewhere (earlier outputs were left intact)"),
    (OSError(errno.EIO, "Input/output error", "/mnt/disk/a.mp4"), "/mnt/disk/a.mp4: Input/output error"),
    (OSError("We couldn't connect to 'https://huggingface.co'.\nCheck your connection."),
     "We couldn't connect to 'https://huggingface.co'."),
], ids=["errno-with-path", "errno-alone", "unknown-errno", "library-oserror"])
def test_file_system_failures_say_the_path_and_what_to_do(exc, line):
    assert one_line(exc) == line


def test_library_reasons_are_their_readable_first_line():
    decord = RuntimeError("Traceback (most recent call last):\n  [bt] (1) libdecord.so(+0x1234)\n"
                          "  File \"../src/video/video_reader.cc\", line 83\n"
                          "DECORDError: [16:21:15] /github/workspace/src/video/video_reader.cc:83: "
                          "ERROR opening: clip.mp4, Invalid data found when processing input")
    assert one_line(decord) == "ERROR opening: clip.mp4, Invalid data found when processing input"
    assert one_line(RuntimeError("[16:21:15] /src/a.cc:9: Check failed: n > 0")) == "Check failed: n > 0"
    assert one_line(ValueError("first  line\n second line")) == "first line"
    assert one_line(ValueError("x" * 500)) == "x" * 200
    assert one_line(ValueError("x" * 500), limit=50) == "x" * 50
    assert one_line(KeyError()) == "KeyError"


def test_pyav_reason_drops_its_errno_and_file_name(tmp_path):
    import av

    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 10)
    with pytest.raises(av.FFmpegError) as raised:
        av.open(str(junk))
    assert str(junk) in str(raised.value)
    assert one_line(raised.value) == "Invalid data found when processing input"
