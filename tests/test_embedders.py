"""CLAP and VGGish embedders: loading (offline, from caches in the real layout), shapes, FAD, the CLAP text score.

The models are the real architectures' code with random weights: CLAP from a
tiny ``ClapConfig`` with a tiny byte-level BPE tokenizer, VGGish at its fixed
size. Nothing is downloaded.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch
from media import flash_video

from vidmusician.evaluation import frechet
from vidmusician.cli import main
from vidmusician.evaluation.embedders import (
    DEFAULT_CLAP,
    ClapEmbedder,
    VGGishEmbedder,
    clap_score,
    clap_text_scores,
    load_embedder,
)
from vidmusician.errors import ConfigError

CLAP_DIM = 8


def _save_tiny_clap(folder):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, ClapProcessor, RobertaTokenizer

    folder.mkdir(parents=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(["calm piano", "upbeat drums and bass"], vocab_size=300,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(folder))
    tokenizer = RobertaTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    config = ClapConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=64, projection_dim=CLAP_DIM),
        audio_config=dict(depths=[1, 1], num_attention_heads=[1, 2], patch_embeds_hidden_size=8, hidden_size=16,
                          projection_dim=CLAP_DIM),
        projection_dim=CLAP_DIM,
    )
    torch.manual_seed(0)
    ClapModel(config).save_pretrained(folder)
    ClapProcessor(feature_extractor=ClapFeatureExtractor(), tokenizer=tokenizer).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def clap_folder(tmp_path_factory):
    return _save_tiny_clap(tmp_path_factory.mktemp("clap") / "tiny_clap")


@pytest.fixture(scope="module")
def clap(clap_folder):
    return ClapEmbedder.from_pretrained(str(clap_folder), device="cpu")


@pytest.fixture(scope="module")
def vggish_file(tmp_path_factory):
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("vggish") / "vggish-10086976.pth"
    torch.save(VGGishEmbedder.build().state_dict(), path)
    return path


@pytest.fixture(scope="module")
def vggish(vggish_file):
    return VGGishEmbedder.from_pretrained(vggish_file, device="cpu")


def _music(rng, seconds, sr, noise=0.0):
    """A chord of three random tones with a pulse, plus white noise of the given level."""
    t = np.arange(int(seconds * sr)) / sr
    tones = sum(np.sin(2 * np.pi * f * t + rng.uniform(0, 6)) for f in rng.uniform(150, 1500, 3))
    pulse = 0.5 + 0.5 * np.cos(2 * np.pi * rng.uniform(1, 3) * t)
    return (0.2 * tones * pulse + noise * rng.standard_normal(t.size)).astype(np.float32)


def _fad_is_zero_with_itself_and_grows_with_a_shift(embedder, n=4):
    """FAD(A, A) ~ 0 < FAD(A, B) for B another set of the same kind < FAD(A, N) for N a set of noise."""
    rng = np.random.default_rng(0)
    sr = embedder.sample_rate
    music_a = [_music(rng, 1.0, sr) for _ in range(n)]
    music_b = [_music(rng, 1.0, sr) for _ in range(n)]
    noise = [rng.standard_normal(sr).astype(np.float32) for _ in range(n)]
    same, other, shifted = (frechet.frechet_audio_distance(music_a, x, sr, embedder) for x in (music_a, music_b, noise))
    assert abs(same) < 1e-6 * other
    assert 0 < other < shifted / 5, (other, shifted)


# --------------------------------------------------------------------------- #
# CLAP


def _hub_cache(tmp_path, monkeypatch, clap_folder=None, offline=True):
    """An HF cache under tmp_path (holding the default id, laid out as huggingface_hub caches a
    download, when ``clap_folder`` is given) and offline mode on or off."""
    import huggingface_hub.constants as hub

    if clap_folder is not None:
        repo = tmp_path / "hub" / ("models--" + DEFAULT_CLAP.replace("/", "--"))
        commit = "0" * 40
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text(commit)
        snapshot = repo / "snapshots" / commit
        snapshot.mkdir(parents=True)
        for f in clap_folder.iterdir():
            (snapshot / f.name).write_bytes(f.read_bytes())
    for name, value in (("HF_HUB_OFFLINE", str(int(offline))), ("TRANSFORMERS_OFFLINE", str(int(offline))),
                        ("HF_HOME", str(tmp_path)), ("HF_HUB_CACHE", str(tmp_path / "hub"))):
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", offline)
    monkeypatch.setattr(hub, "HF_HOME", str(tmp_path))
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))


def test_clap_loads_by_id_from_the_hub_cache_offline(clap_folder, tmp_path, monkeypatch):
    _hub_cache(tmp_path, monkeypatch, clap_folder)
    name, embedder = load_embedder("clap")
    assert name == "clap" and isinstance(embedder, ClapEmbedder)
    assert embedder.sample_rate == 48000 and embedder.truncation == "rand_trunc"
    emb = embedder(np.zeros(48000 * 2, np.float32), 48000)
    assert emb.shape == (1, CLAP_DIM)
    with pytest.raises(ConfigError) as err:
        ClapEmbedder.from_pretrained("laion/not-in-the-cache")
    message = str(err.value)
    assert "not in the Hugging Face cache (HF_HUB_OFFLINE is set)" in message, message
    assert "download it once with a network connection" in message and "--clap-model DIR" in message, message


def test_an_unreachable_hub_loads_the_cached_clap_at_once(clap_folder, tmp_path, monkeypatch, caplog):
    """Not offline, but nothing answers: the default id is one line saying that it is not in the cache (not
    that the default is the fix); once cached it loads; no download retries."""
    import logging

    import huggingface_hub.constants as hub

    _hub_cache(tmp_path / "empty", monkeypatch, offline=False)
    monkeypatch.setattr(hub, "ENDPOINT", "http://127.0.0.1:9")  # the discard port: connection refused
    caplog.set_level(logging.INFO, logger="huggingface_hub")
    with pytest.raises(ConfigError) as err:
        load_embedder("clap")
    message = str(err.value)
    assert "\n" not in message and f"CLAP model {DEFAULT_CLAP!r}: no such folder" in message, message
    assert "not in the Hugging Face cache (the Hub could not be reached)" in message, message
    assert "download it once with a network connection" in message and "--clap-model DIR" in message, message
    assert "such as" not in message, message
    _hub_cache(tmp_path / "cached", monkeypatch, clap_folder, offline=False)
    _, embedder = load_embedder("clap")
    assert embedder(np.zeros(48000, np.float32), 48000).shape == (1, CLAP_DIM)
    assert "Retrying" not in caplog.text and hub.HF_HUB_OFFLINE is False


def test_a_clap_folder_that_is_not_there_is_one_line(tmp_path):
    with pytest.raises(ConfigError) as err:
        ClapEmbedder.from_pretrained(str(tmp_path / "no" / "clap"))
    message = str(err.value)
    assert "cannot be loaded" in message and f"such as {DEFAULT_CLAP}" in message and "--clap-model DIR" in message


def test_the_default_clap_failing_with_the_hub_there_is_not_its_own_fix(tmp_path, monkeypatch):
    """The Hub answers but the download breaks off: the line says what happened and offers a folder,
    not the default id it was loading."""
    import transformers

    import vidmusician.evaluation.embedders as embedders

    def broken(*args, **kwargs):
        raise OSError("Connection reset by peer")

    _hub_cache(tmp_path, monkeypatch, offline=False)
    monkeypatch.setattr(embedders, "hub_unreachable", lambda *args: False)
    monkeypatch.setattr(transformers.ClapModel, "from_pretrained", broken)
    with pytest.raises(ConfigError) as err:
        ClapEmbedder.from_pretrained(DEFAULT_CLAP)
    message = str(err.value)
    assert "cannot be loaded (Connection reset by peer)" in message and "--clap-model DIR" in message, message
    assert "such as" not in message, message


def test_clap_embeds_each_10s_window(clap):
    rng = np.random.default_rng(0)
    for seconds, windows in ((0.5, 1), (3.0, 1), (10.5, 1), (25.0, 3)):
        emb = clap(_music(rng, seconds, 48000), 48000)
        assert emb.shape == (windows, CLAP_DIM), seconds
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    # A window's embedding is that of the window alone.
    audio = _music(rng, 20.0, 48000)
    np.testing.assert_allclose(clap(audio, 48000)[1], clap(audio[480000:], 48000)[0], atol=1e-5)
    with pytest.raises(ConfigError, match="48000 Hz"):
        clap(audio, 32000)


def test_clap_fad_is_zero_with_itself_and_grows_with_a_shift(clap):
    _fad_is_zero_with_itself_and_grows_with_a_shift(clap)


def test_clap_text_score(clap, tmp_path):
    rng = np.random.default_rng(1)
    files = []
    for i in range(2):
        sf.write(tmp_path / f"{i}.wav", _music(rng, 2.0, 48000), 48000)
        files.append(tmp_path / f"{i}.wav")
    scores = clap_text_scores(files, ["calm piano", None], clap)
    assert math.isnan(scores[1]) and -1 <= scores[0] <= 1
    from vidmusician.evaluation.beats import load_audio

    audio = clap(load_audio(files[0], 48000), 48000)
    assert scores[0] == pytest.approx(clap_score(audio, clap.embed_text(["calm piano"])[0]), abs=1e-9)
    assert clap.embed_text(["calm piano", "upbeat drums and bass"]).shape == (2, CLAP_DIM)
    # The prompt is what is scored: another prompt gives another score for the same music.
    other = clap_text_scores(files[:1], ["upbeat drums and bass"], clap)[0]
    assert abs(other - scores[0]) > 1e-6


def test_clap_score_by_hand():
    # Two windows' unit vectors average to the diagonal: cosine 1 with a diagonal text.
    assert clap_score([[2.0, 0.0], [0.0, 1.0]], [1.0, 1.0]) == pytest.approx(1.0)
    assert clap_score([[1.0, 0.0]], [0.0, 3.0]) == pytest.approx(0.0)
    assert clap_score([1.0, 0.0], [-1.0, 0.0]) == pytest.approx(-1.0)
    with pytest.raises(ConfigError, match="one CLAP model"):
        clap_score([[1.0, 0.0]], [1.0, 0.0, 0.0])


# --------------------------------------------------------------------------- #
# VGGish


def test_vggish_loads_from_the_torch_hub_cache(vggish_file, tmp_path, monkeypatch):
    # Where torch.hub.load_state_dict_from_url keeps the release: no download when present.
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / vggish_file.name).write_bytes(vggish_file.read_bytes())
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # so TORCH_HOME is read, whatever set_dir did
    name, embedder = load_embedder("vggish")
    saved = torch.load(vggish_file, weights_only=True)
    assert name == "vggish"
    torch.testing.assert_close(embedder.model.features[0].weight, saved["features.0.weight"])


def test_vggish_embeds_each_096s_frame_without_the_last_relu(vggish):
    rng = np.random.default_rng(0)
    emb = vggish(_music(rng, 3.0, 16000), 16000)
    assert emb.shape == (3, 128)
    assert (emb < 0).any()  # linear features: the ReLU frechet_audio_distance drops is gone
    with pytest.raises(ConfigError, match="16000 Hz"):
        vggish(np.zeros(16000, np.float32), 22050)


def test_vggish_fad_is_zero_with_itself_and_grows_with_a_shift(vggish):
    _fad_is_zero_with_itself_and_grows_with_a_shift(vggish)


def test_vggish_bad_weights_are_one_line(tmp_path):
    bad = tmp_path / "w.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot be loaded"):
        load_embedder("vggish", vggish_weights=bad)


def test_clap_embedding_count_is_known_from_the_length(clap):
    rate = clap.sample_rate
    for seconds in (0.5, 3.0, 10.5, 11.0, 25.0):
        n = int(seconds * rate)
        assert clap.embedding_count(n) == len(clap(np.zeros(n, np.float32), rate)), seconds


def test_too_little_music_for_a_clap_fad_is_one_line_before_any_clip_is_scored(clap_folder, tmp_path, capsys):
    # One 3 s clip: one 10 s window, one embedding per set, no covariance.
    rng = np.random.default_rng(3)
    (tmp_path / "v").mkdir(), (tmp_path / "g").mkdir()
    flash_video(tmp_path / "v" / "c.mp4", [0.6], 3.0, audio=_music(rng, 3.0, 32000))
    sf.write(tmp_path / "g" / "c.wav", _music(rng, 3.0, 32000), 32000)
    argv = ["eval", "--videos", str(tmp_path / "v"), "--generated", str(tmp_path / "g"), "--reference",
            str(tmp_path / "v"), "--encoder", "tiny", "--embedder", "clap", "--clap-model", str(clap_folder)]
    assert main(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "Loading weights" not in line]
    assert len(lines) == 1, lines  # no clip's line ("c: beat_alignment=..."): refused before the clips were scored
    assert lines[0].startswith("vidmusician eval: error: frechet_distance[clap]: "), lines
    for needle in ("the generated music gives 1 embedding", "the reference music gives 1 embedding",
                   "evaluate more clips or longer ones", "one embedding per 10 s window"):
        assert needle in lines[0], lines


# --------------------------------------------------------------------------- #
# vidmusician eval with both embedders and prompts


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    rng = np.random.default_rng(2)
    (root / "v").mkdir()
    (root / "g").mkdir()
    for name in ("a", "b", "c"):
        flash_video(root / "v" / f"{name}.mp4", [0.6], 1.2, audio=_music(rng, 1.2, 32000))
        sf.write(root / "g" / f"{name}.wav", _music(rng, 1.2, 32000), 32000)
    return root


def test_eval_reports_both_distances_and_the_text_score(folders, clap_folder, vggish_file, tmp_path):
    out = tmp_path / "r.json"
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"a": "calm piano", "b": "upbeat drums and bass"}))
    argv = ["eval", "--videos", str(folders / "v"), "--generated", str(folders / "g"), "--reference",
            str(folders / "v"), "--encoder", "tiny", "--quiet", "--out", str(out),
            "--embedder", "clap", "--clap-model", str(clap_folder), "--embedder", "vggish",
            "--vggish-weights", str(vggish_file), "--prompts", str(prompts)]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert set(report["frechet_distance"]) == {"clap", "vggish"}
    assert all(v > 0 for v in report["frechet_distance"].values())
    scores = {f["name"]: f["clap_text"] for f in report["files"]}
    assert scores["c"] is None and all(-1 <= scores[n] <= 1 for n in "ab")
    assert report["mean"]["clap_text"] == pytest.approx((scores["a"] + scores["b"]) / 2)

    # One prompt for every clip, CLAP loaded for the score alone (no reference needed).
    argv = ["eval", "--videos", str(folders / "v"), "--generated", str(folders / "g"), "--encoder", "tiny",
            "--quiet", "--out", str(out), "--text", "calm piano", "--clap-model", str(clap_folder)]
    assert main(argv) == 0
    again = {f["name"]: f["clap_text"] for f in json.loads(out.read_text())["files"]}
    assert again["a"] == pytest.approx(scores["a"]) and again["c"] is not None


@pytest.mark.parametrize("content, needle", [("[1, 2]", "clip name -> prompt"), ("{not json", "not valid JSON")])
def test_bad_prompts_file(folders, tmp_path, capsys, content, needle):
    prompts = tmp_path / "p.json"
    prompts.write_text(content)
    argv = ["eval", "--videos", str(folders / "v"), "--generated", str(folders / "g"), "--encoder", "tiny",
            "--quiet", "--prompts", str(prompts)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err and str(prompts) in err
    assert main(argv[:-2] + ["--prompts", str(prompts), "--text", "x"]) == 2
    assert "pass one of them" in capsys.readouterr().err
