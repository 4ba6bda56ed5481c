"""Alignment: does generated music put its events at the video's events and take its style from the scene?

A controlled task the tiny learned backbone ('tiny-learned') can learn on a CPU in
minutes. Each video shows one of ``--scenes`` background colours (its scene class)
with a small drifting square, and a full-white frame at each visual event (~3 per
second). Its soundtrack is the base's synthetic music (vidmusician.learned_base):
the style given by the scene class, an event at each flash. Adapters are trained
through the real two-stage recipe (``python -m vidmusician.training.train`` with
recipes/stage1_semantic.json, then recipes/stage2_rhythm.json from the stage-1
adapter, both with ``--set`` overrides), then music is generated for new videos:

- event precision / recall / F1: generated event onsets against the video's flash
  frames, each flash matched to at most one onset within one token frame (mean
  over videos);
- style accuracy: the generated loop's style equals the video's scene class;
- audio F1: the same F1 in audio space, on what a listener gets: onsets an onset
  detector (librosa, through vidmusician.evaluation.beats) hears in the decoded music,
  against the flash times, within 50 ms (the codec plays each token; see
  vidmusician.learned_base.music_codec);

for no video (the frozen base), stage 1 only, stage 1+2, and stage 1+2 with each
video's features swapped for another test video's, at MusicGen's default sampling
(top-k 250, classifier-free guidance 3) and at greedy decoding. Chance: no-video
music has events at the base's rate at random times and a style 1 in ``--scenes``.

    python benchmarks/alignment.py                      # the measured run (docs/alignment.md)
    python benchmarks/alignment.py --train 4 --test 2 --steps1 2 --steps2 2   # smoke

A last line gives the audio F1 of the test clips' own soundtracks (their true codes
decoded): the most the detector finds.

Real soundtracks (docs/alignment.md): ``--soundtrack aac`` muxes each clip's music into
its mp4 as AAC (48 kHz, 128 kbit/s) and prepares the codes from the mp4's track through
``prepare``'s reader; ``aac+babble`` mixes speech-like noise 20 dB below the music in
first. ``--cfg 1 1.5 2 3 5 --plausibility 0 0.1`` adds the curve: default sampling at
each guidance coefficient and plausibility cut, every condition; ``--codebook-weights``
trains with per-codebook loss weights, ``--plausible-targets`` with the recipes'
``plausible_targets`` (0: every target, MusicGen's loss):

    python benchmarks/alignment.py --test 8 --soundtrack aac --cfg 1 1.5 2 3 5 --plausibility 0 0.1

``--lr-sweep`` measures the adapters' safe learning rates instead (recipes/README.md):
for each rate, both adapter groups are trained from fresh (full-width in-attention)
for ``--sweep-steps`` steps on the same data, and it prints the final training loss,
the holdout loss with the true and with mismatched videos, and the hidden-state norm
(mean per-token norm of the LM's last layer output on the holdout; the base's with no
video first):

    python benchmarks/alignment.py --lr-sweep 1e-4 1e-3 3e-3 1e-2 3e-2 1e-1 --train 24 --holdout 6
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from vidmusician import learned_base as lb
from vidmusician.training.dataset import DatasetMeta, ShardWriter
from vidmusician.video.features import extract_features, load_encoder

REPO = Path(__file__).resolve().parents[1]
FPS = 25  # the video's frame rate; the codec's (lb.FRAME_RATE) is 50 Hz, as the real one's
# A music video's soundtrack: AAC at 48 kHz and 128 kbit/s (mono here; stereo gets ~2x the bits).
AAC_RATE, AAC_KBPS = 48000, 128
BABBLE_DB = 20  # speech-like noise this far below the music (talk over the music)
PALETTE = np.array([[200, 30, 30], [30, 160, 60], [40, 60, 220], [230, 200, 40]], np.uint8)
TINY_ADAPTER = ["adapter.memory_dim=32", "adapter.attn_dim=16", "adapter.attn_heads=2"]


def write_video(path: Path, scene: int, events: list[int], num_frames: int, size: int = 64,
                audio: torch.Tensor | None = None) -> Path:
    """A scene-coloured video with a drifting square and a white frame at each event frame.

    ``audio`` (mono, at the codec's 32 kHz): muxed in as a music video's soundtrack is, AAC at
    ``AAC_RATE`` and ``AAC_KBPS``.
    """
    import av

    frames = np.empty((num_frames, size, size, 3), np.uint8)
    frames[:] = PALETTE[scene]
    for t in range(num_frames):
        x = (t // 2) % (size - 8)  # the square drifts one pixel every two frames: the scene is never static
        frames[t, 28:36, x:x + 8] = 255 - PALETTE[scene]
    frames[events] = 255
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(FPS))
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        track = None
        if audio is not None:  # every stream is added before the first packet
            track = container.add_stream("aac", rate=AAC_RATE, layout="mono")
            track.bit_rate = AAC_KBPS * 1000
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
        if track is not None:
            import julius

            samples = julius.resample_frac(audio.float().reshape(-1), lb.SAMPLE_RATE, AAC_RATE)
            frame = av.AudioFrame.from_ndarray(samples.numpy()[None], format="fltp", layout="mono")
            frame.sample_rate, frame.pts = AAC_RATE, 0
            container.mux(track.encode(frame))
            container.mux(track.encode())
    return path


def babble(num_samples: int, seed: int) -> torch.Tensor:
    """Speech-like noise at 32 kHz, RMS 1: band-limited noise (300-3400 Hz) in ~4 syllables per second."""
    import julius

    g = torch.Generator().manual_seed(seed)
    noise = julius.lowpass_filter(julius.highpass_filter(torch.randn(num_samples, generator=g), 300 / lb.SAMPLE_RATE),
                                  3400 / lb.SAMPLE_RATE)
    t = torch.arange(num_samples) / lb.SAMPLE_RATE
    rate = 3.0 + 2.0 * torch.rand(1, generator=g)  # syllables per second
    noise = noise * torch.sin(torch.pi * rate * t + 6.3 * torch.rand(1, generator=g)).abs() ** 2
    return noise / noise.pow(2).mean().sqrt()


def soundtrack_codes(clip: dict, video: Path, kind: str, num_frames: int, codec, seed: int) -> torch.Tensor:
    """The codes [K, T] that preparation gets from a clip's soundtrack.

    ``lossless``: the music's own codes (a lossless file beside the video encodes back to
    them exactly). ``aac``: the music muxed into the video as AAC, read back from the video
    by ``prepare``'s reader and encoded by the codec. ``aac+babble``: speech-like noise
    ``BABBLE_DB`` below the music mixed in first (talk over the music), then AAC.
    """
    from vidmusician.training.dataset import DatasetMeta
    from vidmusician.training.prepare import Source, encode_windows, load_audio

    codes = lb.synthetic_codes(clip["events"], clip["scene"], clip["phase"], num_frames)
    if kind == "lossless":
        return codes
    music = lb.synthetic_audio(codes)[0]
    if kind == "aac+babble":
        music = music + babble(music.shape[-1], seed) * music.pow(2).mean().sqrt() * 10 ** (-BABBLE_DB / 20)
    step = codec.frame_rate // FPS  # codec frames per video frame
    write_video(video, clip["scene"], [f // step for f in clip["events"]], num_frames // step, audio=music)
    meta = DatasetMeta("tiny-learned", lb.SAMPLE_RATE, 1, codec.frame_rate, lb.N_Q, lb.CARD, "tiny", 32, 16, 1.0,
                       FPS, num_frames / codec.frame_rate, num_frames / codec.frame_rate)
    wav = load_audio(Source(video.name, video), meta)
    return encode_windows(codec, wav, [0.0], num_frames / codec.frame_rate)[0]


def make_clips(folder: Path, n: int, scenes: int, seconds: float, rng: random.Random, encoder) -> list[dict]:
    """n clips: scene class, event frames (codec frames, each on a video frame), phase, and the tiny
    encoder's features of the video."""
    clips = []
    step = lb.FRAME_RATE // FPS  # codec frames per video frame
    for i in range(n):
        scene, events = i % scenes, lb.event_frames(rng, int(round(seconds * lb.FRAME_RATE)), fps=FPS)
        video = write_video(folder / f"{i}.mp4", scene, [f // step for f in events], int(round(seconds * FPS)))
        clips.append(dict(scene=scene, events=events, phase=rng.randrange(lb.PERIOD),
                          features=extract_features(video, encoder)))
    return clips


def write_dataset(root: Path, train: list[dict], holdout: list[dict], seconds: float, num_frames: int,
                  soundtrack: str = "lossless") -> dict:
    """The clips and their music, through ``soundtrack`` (:func:`soundtrack_codes`), as a prepared dataset.

    Returns the fraction of training frames whose token differs from the music's, per codebook.
    """
    root.mkdir(parents=True)
    codec = lb.music_codec()
    DatasetMeta("tiny-learned", 32000, 1, float(lb.FRAME_RATE), 4, 400, "tiny", 32, 16, 1.0, float(FPS), seconds,
                seconds).save(root)
    writer = ShardWriter(root)
    changed = []
    for split, clips in (("train", train), ("holdout", holdout)):
        for i, c in enumerate(clips):
            codes = soundtrack_codes(c, root / f"{split}{i}.mp4", soundtrack, num_frames, codec, seed=len(changed))
            changed.append((codes != lb.synthetic_codes(c["events"], c["scene"], c["phase"], num_frames)).float()
                           .mean(dim=-1))
            writer.add({"source": f"{split}{i}", "split": split, "text": None}, [(0.0, codes, c["features"])])
    writer.flush()
    return torch.stack(changed).mean(dim=0).tolist()


def train_stage(recipe: str, data: Path, out: Path, steps: int, lr: float, batch: int, extra: list[str]) -> list[dict]:
    """One stage through the training CLI; returns its log rows."""
    sets = [f"max_steps={steps}", f"warmup_steps={max(1, steps // 10)}", f"lr={lr}", f"min_lr={lr / 10}",
            f"batch_size={batch}", f"eval_every={steps}", f"save_every={steps}", f"log_every={max(1, steps // 4)}",
            "num_workers=0", "gradient_checkpointing=false", "eval_windows=64", *TINY_ADAPTER, *extra]
    cmd = [sys.executable, "-m", "vidmusician.training.train", "--recipe", str(REPO / "recipes" / recipe), "--data", str(data),
           "--backbone", "tiny-learned", "--output", str(out)] + [a for s in sets for a in ("--set", s)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"training failed: {' '.join(cmd)}\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def score(vm, clips: list[dict], videos: list, seconds: float, sampling: bool, seed: int, **params) -> dict:
    """Generates one piece per clip (its video given by ``videos``) and scores it against the clip.

    ``params``: generation parameters besides ``use_sampling`` (the library's defaults otherwise:
    top-k 250, guidance 3).
    """
    vm.set_generation_params(use_sampling=sampling, **params)
    audio, tokens = vm.generate(videos, duration=seconds, seed=seed, return_tokens=True)
    rows = [lb.match_events(lb.event_onsets(t[0]), c["events"], tolerance=1) for t, c in zip(tokens.cpu(), clips)]
    style = [lb.piece_style(t[0]) == c["scene"] for t, c in zip(tokens.cpu(), clips)]
    p, r, f = (float(np.mean(col)) for col in zip(*rows))
    return dict(precision=p, recall=r, f1=f, style=float(np.mean(style)),
                audio_f1=float(np.mean([audio_f1(a, c, vm.sample_rate) for a, c in zip(audio.cpu(), clips)])))


def audio_f1(audio: torch.Tensor, clip: dict, sample_rate: int) -> float:
    """F1 of the onsets heard in ``audio`` against the clip's flash times, within 50 ms."""
    times = [f / lb.FRAME_RATE for f in clip["events"]]
    return lb.match_events(lb.audio_onsets(audio, sample_rate), times, tolerance=0.05)[2]


def soundtrack_f1(clips: list[dict], num_frames: int) -> float:
    """Audio F1 of the clips' own soundtracks, decoded by the tiny-learned codec: the detector's ceiling."""
    codec = lb.music_codec()
    with torch.no_grad():
        audio = codec.decode(torch.stack([lb.synthetic_codes(c["events"], c["scene"], c["phase"], num_frames)
                                          for c in clips]))
    return float(np.mean([audio_f1(a, c, codec.sample_rate) for a, c in zip(audio, clips)]))


def hidden_norm(vm, data: Path, videos: bool = True) -> float:
    """Mean per-token norm of the LM's last layer output on the holdout (``videos=False``: no video, the base)."""
    from vidmusician.training.dataset import Collate, PreparedDataset
    from vidmusician.training.objective import Objective

    holdout = PreparedDataset(data, "holdout")
    batch = Collate(vm.config.frame_rate)([holdout[i] for i in range(len(holdout))])
    norms = []
    hook = vm.lm.transformer.layers[-1].register_forward_hook(lambda m, i, out: norms.append(out.norm(dim=-1).mean()))
    try:
        with torch.no_grad():
            Objective(vm)(batch.codes, batch.valid, batch.videos if videos else [None] * len(holdout), batch.texts)
    finally:
        hook.remove()
    return float(norms[-1])


def lr_sweep(args, work: Path) -> list[dict]:
    """Trains fresh adapters (both groups) at each rate of ``args.lr_sweep``; returns one row per rate."""
    from vidmusician.model import VidMusician

    rows = []
    for lr in args.lr_sweep:
        out = work / f"lr-{lr:g}"
        log = train_stage("stage2_rhythm.json", work / "data", out, args.sweep_steps, lr, args.batch,
                          ["init_adapter=null", 'trainable=["semantic", "rhythm"]', "adapter.rhythm_rank=null"])
        vm = VidMusician.from_pretrained(out / "adapter", backbone="tiny-learned", device="cpu")
        h = [r for r in log if "holdout_loss" in r][-1]
        loss = [r["loss"] for r in log if "loss" in r][-1]
        if not rows:
            print(f"base (no video): hidden norm {hidden_norm(vm, work / 'data', videos=False):.2f}")
        rows.append(dict(lr=lr, loss=loss, holdout=h["holdout_loss"], mismatched=h["holdout_loss_mismatched_video"],
                         norm=hidden_norm(vm, work / "data")))
    return rows


def run(args) -> dict | list[dict]:
    from vidmusician.model import VidMusician

    torch.manual_seed(args.seed)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="vm-alignment-"))
    num_frames = int(round(args.seconds * lb.FRAME_RATE))  # codec frames
    rng = random.Random(args.seed)
    encoder = load_encoder("tiny", device="cpu")
    (work / "videos").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    test_clips = 0 if args.lr_sweep else args.test
    clips = make_clips(work / "videos", args.train + args.holdout + test_clips, args.scenes, args.seconds, rng, encoder)
    train, holdout, test = clips[:args.train], clips[args.train:args.train + args.holdout], clips[-args.test:]
    changed = write_dataset(work / "data", train, holdout, args.seconds, num_frames, args.soundtrack)
    print(f"data: {len(train)} train / {len(holdout)} holdout / {test_clips} test clips of {args.seconds:g} s, "
          f"{args.scenes} scenes, {args.soundtrack} soundtracks ({time.perf_counter() - t0:.0f} s)")
    print("tokens the soundtrack changed, per codebook: " + " ".join(f"{c:.3f}" for c in changed))
    if args.lr_sweep:
        return lr_sweep(args, work)

    t0 = time.perf_counter()
    weights = [f"codebook_weights={json.dumps(args.codebook_weights)}"] if args.codebook_weights else []
    if args.plausible_targets is not None:
        weights.append(f"plausible_targets={args.plausible_targets}")
    if args.rhythm_context is not None:
        weights.append(f"adapter.rhythm_context={args.rhythm_context}")
    log1 = train_stage("stage1_semantic.json", work / "data", work / "stage1", args.steps1, args.lr1, args.batch,
                       weights)
    log2 = train_stage("stage2_rhythm.json", work / "data", work / "stage2", args.steps2, args.lr2, args.batch,
                       [f"init_adapter={work / 'stage1' / 'adapter'}", *weights])
    for name, log in (("stage 1", log1), ("stage 2", log2)):
        h = [r for r in log if "holdout_loss" in r][-1]
        print(f"{name}: holdout loss {h['holdout_loss']:.3f}, with mismatched videos "
              f"{h['holdout_loss_mismatched_video']:.3f}")
    print(f"training: {time.perf_counter() - t0:.0f} s")

    stage1 = VidMusician.from_pretrained(work / "stage1" / "adapter", backbone="tiny-learned", device="cpu")
    stage2 = VidMusician.from_pretrained(work / "stage2" / "adapter", backbone="tiny-learned", device="cpu")
    feats = [c["features"] for c in test]
    shuffled = feats[1:] + feats[:1]  # every clip gets another clip's video
    conditions = {"no video": (stage2, [None] * len(test)), "stage 1": (stage1, feats),
                  "stage 1+2": (stage2, feats), "stage 1+2, shuffled video": (stage2, shuffled)}
    results = {}
    for mode, sampling in (("default sampling", True), ("greedy", False)):
        for name, (vm, videos) in conditions.items():
            results[(mode, name)] = score(vm, test, videos, args.seconds, sampling, args.seed)
    for alpha in args.plausibility:
        for cfg in args.cfg:
            for name, (vm, videos) in conditions.items():
                results[(alpha, cfg, name)] = score(vm, test, videos, args.seconds, True, args.seed, cfg_coef=cfg,
                                                    plausibility=alpha)
    results["soundtrack audio F1"] = soundtrack_f1(test, num_frames)
    return results


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train", type=int, default=64, help="training clips")
    p.add_argument("--holdout", type=int, default=8, help="holdout clips (the trainer's holdout loss)")
    p.add_argument("--test", type=int, default=16, help="new clips music is generated for")
    p.add_argument("--scenes", type=int, default=4, choices=range(1, lb.STYLES + 1), help="scene classes")
    p.add_argument("--seconds", type=float, default=4.0, help="clip length (the learned base's training length)")
    p.add_argument("--steps1", type=int, default=150, help="stage-1 steps")
    p.add_argument("--steps2", type=int, default=150, help="stage-2 steps")
    p.add_argument("--lr1", type=float, default=3e-3, help="stage-1 learning rate")
    p.add_argument("--lr2", type=float, default=3e-3, help="stage-2 learning rate")
    p.add_argument("--batch", type=int, default=8, help="windows per training step")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--soundtrack", default="lossless", choices=["lossless", "aac", "aac+babble"],
                   help="what preparation reads: the music's own codes, the mp4's AAC track, or AAC with "
                        "speech-like noise mixed in")
    p.add_argument("--cfg", type=float, nargs="*", default=[], metavar="C",
                   help="the curve: default sampling at each of these guidance coefficients (text and video "
                        "together; the clips have no text prompt, so it is the video's guidance)")
    p.add_argument("--plausibility", type=float, nargs="+", default=[0.0], metavar="A",
                   help="the curve at each of these plausibility cuts (0: MusicGen's guidance)")
    p.add_argument("--codebook-weights", type=float, nargs="+", metavar="W",
                   help="train both stages with these per-codebook loss weights (the recipe's codebook_weights)")
    p.add_argument("--plausible-targets", type=float, metavar="F",
                   help="train both stages with this recipe plausible_targets (0: every target, MusicGen's loss; "
                        "default: the recipes')")
    p.add_argument("--rhythm-context", type=int, default=None, metavar="N",
                   help="earlier local frames the rhythm input reads (the adapter config's rhythm_context; "
                        "0: the paper's per-frame input; default: the library's)")
    p.add_argument("--workdir", default=None, help="folder for videos, data and runs (default: a temporary one)")
    p.add_argument("--lr-sweep", type=float, nargs="+", metavar="LR", help="measure these learning rates instead")
    p.add_argument("--sweep-steps", type=int, default=80, help="training steps per rate of --lr-sweep")
    args = p.parse_args()
    results = run(args)
    if args.lr_sweep:
        print(f"\n{'lr':>8}{'train loss':>12}{'holdout':>10}{'mismatched':>12}{'hidden norm':>13}")
        for r in results:
            print(f"{r['lr']:8.0e}{r['loss']:12.4f}{r['holdout']:10.4f}{r['mismatched']:12.4f}{r['norm']:13.2f}")
        return
    ceiling = results.pop("soundtrack audio F1")
    print(f"\n{'':10}{'condition':28}{'precision':>10}{'recall':>8}{'F1':>6}{'style':>7}{'audio F1':>10}")
    for key, r in results.items():
        if len(key) == 2:
            mode, name = key
            print(f"{mode[:9]:10}{name:28}{r['precision']:10.2f}{r['recall']:8.2f}{r['f1']:6.2f}{r['style']:7.2f}"
                  f"{r['audio_f1']:10.2f}")
    print(f"style chance {1 / args.scenes:.2f}; audio F1 of the test clips' own soundtracks {ceiling:.2f}")
    if args.cfg:
        print(f"\ndefault sampling across guidance: token F1 (audio F1) per condition\n{'plaus.':>7}{'cfg':>6}"
              f"{'stage 1+2':>14}{'no video':>10}{'stage 1':>10}{'shuffled':>10}")
        for alpha in args.plausibility:
            for cfg in args.cfg:
                r = {name: results[(alpha, cfg, name)] for name in ("stage 1+2", "no video", "stage 1",
                                                                    "stage 1+2, shuffled video")}
                print(f"{alpha:7g}{cfg:6g}{r['stage 1+2']['f1']:7.2f} ({r['stage 1+2']['audio_f1']:.2f})"
                      f"{r['no video']['f1']:10.2f}{r['stage 1']['f1']:10.2f}"
                      f"{r['stage 1+2, shuffled video']['f1']:10.2f}")


if __name__ == "__main__":
    main()
