"""KL divergence of PaSST label distributions (audiocraft's metric) around a tiny random PaSST."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from media import flash_video

from vidmusician.evaluation.audio_kl import PASST_SAMPLE_RATE, PasstKL, passt_kl_divergence
from vidmusician.cli import main
from vidmusician.errors import ConfigError
from vidmusician.evaluation.evaluate import evaluate


@pytest.fixture(scope="module")
def metric():
    from hear21passt.base import AugmentMelSTFT, PasstBasicWrapper
    from hear21passt.models.passt import PaSST

    # hear21passt's get_basic_model front end and PaSST-S's layout, one narrow block.
    mel = AugmentMelSTFT(n_mels=128, sr=32000, win_length=800, hopsize=320, n_fft=1024, freqm=48, timem=192,
                         htk=False, fmin=0.0, fmax=None, norm=1, fmin_aug_range=10, fmax_aug_range=2000)
    torch.manual_seed(0)
    net = PaSST(img_size=(128, 998), patch_size=16, stride=(10, 10), embed_dim=16, depth=1, num_heads=2,
                distilled=True, num_classes=527)
    torch.nn.init.normal_(net.head[-1].weight, std=2.0)  # spread the logits: a random head is near uniform
    return PasstKL(PasstBasicWrapper(mel=mel, net=net, mode="logits"))


def _files(root, name, rng, noise):
    root.mkdir(exist_ok=True)
    t = np.arange(PASST_SAMPLE_RATE) / PASST_SAMPLE_RATE
    out = []
    for i in range(3):
        if noise:
            y = 0.8 * rng.standard_normal(t.size)
        else:
            y = 0.3 * sum(np.sin(2 * np.pi * f * t) for f in rng.uniform(200, 1000, 3))
        sf.write(root / f"{name}{i}.wav", y.astype(np.float32), PASST_SAMPLE_RATE)
        out.append(root / f"{name}{i}.wav")
    return out


def test_kl_is_zero_with_itself_and_grows_with_a_shift(metric, tmp_path):
    rng = np.random.default_rng(0)
    music_a, music_b = _files(tmp_path / "a", "a", rng, False), _files(tmp_path / "b", "b", rng, False)
    noise = _files(tmp_path / "n", "n", rng, True)
    same = passt_kl_divergence(music_a, music_a, metric)
    other = passt_kl_divergence(music_a, music_b, metric)
    shifted = passt_kl_divergence(music_a, noise, metric)
    # Not exactly 0: audiocraft adds 1e-6 to the probabilities inside the log
    # (at most 527 classes x 1e-6 in size).
    assert abs(same["kld"]) < 6e-4 and abs(same["kld_both"]) < 1.2e-3
    assert 0 < other["kld"] < shifted["kld"], (other, shifted)
    assert shifted["kld_both"] == pytest.approx(shifted["kld"] + shifted["kld_qp"])


def test_kl_is_reference_given_generated_by_hand(metric, tmp_path):
    rng = np.random.default_rng(1)
    gen, ref = _files(tmp_path / "g", "g", rng, False)[:1], _files(tmp_path / "r", "r", rng, True)[:1]

    def probs(path):
        from vidmusician.evaluation.beats import load_audio

        wav = torch.from_numpy(load_audio(path, PASST_SAMPLE_RATE))
        return metric.label_distribution(wav[None, None], torch.tensor([wav.numel()]),
                                         torch.tensor([PASST_SAMPLE_RATE]))[0].double()

    p_gen, p_ref = probs(gen[0]), probs(ref[0])
    expected = float(torch.sum(p_ref * (p_ref.log() - (p_gen + 1e-6).log())))
    assert passt_kl_divergence(gen, ref, metric)["kld"] == pytest.approx(expected, rel=1e-4)


def test_eval_reports_the_kl(metric, tmp_path):
    rng = np.random.default_rng(2)
    (tmp_path / "v").mkdir()
    (tmp_path / "g").mkdir()
    for name in ("x", "y"):
        flash_video(tmp_path / "v" / f"{name}.mp4", [0.4], 1.0, audio=0.3 * rng.standard_normal(32000))
        sf.write(tmp_path / "g" / f"{name}.wav", 0.3 * np.sin(np.arange(32000) / 9.0), 32000)
    report = evaluate(tmp_path / "v", tmp_path / "g", tmp_path / "v", encoder="tiny", kl_metric=metric)
    expected = passt_kl_divergence([tmp_path / "g" / "x.wav", tmp_path / "g" / "y.wav"],
                                   [tmp_path / "v" / "x.mp4", tmp_path / "v" / "y.mp4"], metric)
    assert report.kl_divergence == pytest.approx(expected)
    assert json.loads(json.dumps(report.to_dict()))["kl_divergence"]["kld"] > 0
    assert "kl_divergence[passt]" in report.table()
    with pytest.raises(ConfigError, match="reference"):
        evaluate(tmp_path / "v", tmp_path / "g", None, encoder="tiny", kl_metric=metric)
    out = tmp_path / "r.json"
    argv = ["eval", "--videos", str(tmp_path / "v"), "--generated", str(tmp_path / "g"), "--kl", "--quiet",
            "--out", str(out)]
    assert main(argv) == 2 and not out.exists()


@pytest.mark.parametrize("url", ["https://example.org/passt.pt", None])
def test_passt_weights_unavailable_is_one_line_with_or_without_a_known_url(monkeypatch, url):
    """hear21passt downloads its weights on first use: without the network, one line that offers a
    copy of the file where its URL is known, and leaving out --kl in any case."""
    import vidmusician.evaluation.audio_kl as audio_kl
    from vidmusician.errors import ConfigError

    def unreachable(self, model=None):
        raise OSError("no network")

    monkeypatch.setattr(audio_kl, "_passt_weights_url", lambda: url)
    monkeypatch.setattr(audio_kl.PasstKL.__mro__[1], "__init__", unreachable)
    with pytest.raises(ConfigError) as err:
        PasstKL()
    message = str(err.value)
    fix = f"connect once, or put a copy of {url} into that folder, or leave out --kl" if url else \
        "connect once, or leave out --kl"
    assert message.endswith(fix) and "\n" not in message, message
