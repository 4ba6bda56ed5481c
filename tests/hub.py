"""Miniature Hugging Face hub repositories, offline: the real file formats and layout, tiny weights.

:func:`build_hub` writes, into a Hugging Face cache folder (``models--org--name/
{blobs, refs/main, snapshots/<commit>/}``), miniature copies of the repositories
that ``load_backbone`` and audiocraft read, each in the format the hub serves:

==================================  ==============================================================
``facebook/musicgen-small``         audiocraft export: ``state_dict.bin`` (``xp.cfg`` a pickled
                                    OmegaConf DictConfig in musicgen-small's config layout: T5
                                    ``t5-base`` text conditioner, cross fuser, delay pattern) and
                                    ``compression_state_dict.bin`` = ``{'pretrained':
                                    'facebook/encodec_32khz'}``, as on the hub; ``config.json`` of
                                    the transformers port (``model_type`` only)
``someone/musicgen-finetune``       the same LM exported by ``audiocraft.utils.export`` (``xp.cfg``
                                    a YAML string) with a full audiocraft EnCodec export as codec
``facebook/musicgen-stereo-small``  stereo: ``interleave_stereo_codebooks.use``, 8 codebooks
                                    (delays 0 0 1 1 2 2 3 3), the mono 32 kHz codec wrapped
``facebook/musicgen-melody``        the melody config (prepend fuser, ``self_wav`` chroma
                                    conditioner), ``config.json`` of the transformers port, and a
                                    ``state_dict.bin`` with the config and no weights
``facebook/encodec_32khz``          transformers ``EncodecModel.save_pretrained`` (config.json,
                                    model.safetensors) + ``preprocessor_config.json``
``t5-base``                         ``T5EncoderModel`` (d_model 768 as audiocraft's table needs,
                                    1 layer) + ``tokenizer.json`` built with ``tokenizers``
``google/flan-t5-base``             a T5 whose tokenizer is only ``spiece.model`` (sentencepiece)
==================================  ==============================================================

The LMs are tiny (dim 32, 2 layers; ``facebook/musicgen-small`` and the fine-tune
share one) with the real codec's interface: 32 kHz mono, 50 Hz, 4 codebooks of 2048.
Building everything takes a few seconds. The repository names are module constants
(``MUSICGEN``, ``FINETUNE``, ``STEREO``, ``MELODY``, ``ENCODEC``, ``T5``, ``SPIECE_T5``).

Use from a test module (``tests/`` is on ``sys.path``)::

    from hub import hub_cache, offline_hub  # noqa: F401  (pytest fixtures)

    def test_something(offline_hub):
        musicgen = load_backbone("facebook/musicgen-small", device="cpu")

``hub_cache`` (session-scoped) builds the cache once and returns its folder;
``offline_hub`` (function-scoped) points the environment, ``huggingface_hub.constants``
and audiocraft's cache variable at it with ``HF_HUB_OFFLINE=1`` and returns the same
folder. Outside pytest, ``with offline_env(cache): ...`` does the same, and
:func:`build_hub` writes a cache anywhere. Subprocesses see the cache through the
environment (``HF_HOME``, ``HF_HUB_CACHE``, ``HF_HUB_OFFLINE``) set inside the context.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from vidmusician.adapter.audiocraft_internals import codebooks as rvq_codebooks

MUSICGEN = "facebook/musicgen-small"
FINETUNE = "someone/musicgen-finetune"
STEREO = "facebook/musicgen-stereo-small"
MELODY = "facebook/musicgen-melody"
ENCODEC = "facebook/encodec_32khz"
T5 = "t5-base"
SPIECE_T5 = "google/flan-t5-base"

# The miniature LM: what matches the real models is the interface (50 Hz, 4 codebooks
# of 2048, 32 kHz mono codec), not the size.
LM_DIM, LM_HEADS, LM_LAYERS = 32, 4, 2
CARD, N_Q, SAMPLE_RATE, RATIOS = 2048, 4, 32000, [8, 5, 4, 4]
T5_DIM = 768  # audiocraft's T5Conditioner.MODELS_DIMS['t5-base']; everything else of the T5 is tiny
WORDS = "lo fi piano drums bass calm upbeat jazz rock guitar synth ambient song music with a and the".split()


def musicgen_cfg(n_q: int = N_Q, stereo: bool = False, melody: bool = False) -> dict:
    """An LM ``xp.cfg`` in the layout of audiocraft's musicgen configs (solver, lm, conditioner yamls)."""
    delays = [q // 2 for q in range(n_q)] if stereo else list(range(n_q))
    t5 = {"model": "t5", "t5": {"name": T5, "finetune": False, "word_dropout": 0.3, "normalize_text": False}}
    conditioners = {"description": t5}
    fuser = {"cross_attention_pos_emb": False, "cross_attention_pos_emb_scale": 1,
             "sum": [], "prepend": [], "cross": ["description"], "input_interpolate": []}
    if melody:
        conditioners = {"args": {"merge_text_conditions_p": 0.25, "drop_desc_p": 0.5},
                        "self_wav": {"model": "chroma_stem", "chroma_stem": {
                            "sample_rate": SAMPLE_RATE, "n_chroma": 12, "radix2_exp": 14, "argmax": True,
                            "match_len_on_eval": False, "eval_wavs": None, "n_eval_wavs": 100,
                            "cache_path": None}},
                        "description": t5}
        fuser["prepend"] = ["self_wav"]
    return {
        "device": "cuda", "dtype": "float32", "autocast": False, "autocast_dtype": "bfloat16", "seed": 2036,
        "efficient_attention_backend": "torch", "sample_rate": SAMPLE_RATE, "channels": 2 if stereo else 1,
        "compression_model_checkpoint": f"//pretrained/{ENCODEC}", "compression_model_n_q": None,
        "solver": "musicgen", "lm_model": "transformer_lm",
        "dataset": {"batch_size": 192, "num_workers": 10, "segment_duration": 30, "sample_on_weight": False,
                    "sample_on_duration": False, "return_info": True, "min_segment_ratio": 0.8,
                    "train": {"num_samples": 1000000, "merge_text_p": 0.25, "drop_desc_p": 0.5,
                              "drop_other_p": 0.5}},
        "transformer_lm": {
            "dim": LM_DIM, "num_heads": LM_HEADS, "num_layers": LM_LAYERS, "hidden_scale": 4, "n_q": n_q,
            "card": CARD, "dropout": 0.0, "emb_lr": None, "activation": "gelu", "norm_first": True,
            "bias_ff": False, "bias_attn": False, "bias_proj": False, "past_context": None, "causal": True,
            "custom": False, "memory_efficient": True, "attention_as_float32": False, "layer_scale": None,
            "positional_embedding": "sin", "xpos": False, "checkpointing": "none", "weight_init": "gaussian",
            "depthwise_init": "current", "zero_bias_init": True, "norm": "layer_norm", "cross_attention": False,
            "qk_layer_norm": False, "qk_layer_norm_cross": False, "attention_dropout": None, "kv_repeat": 1,
            "two_step_cfg": False},
        "codebooks_pattern": {"modeling": "delay",
                              "delay": {"delays": delays, "flatten_first": 0, "empty_initial": 0},
                              "unroll": {"flattening": list(range(n_q)), "delays": [0] * n_q},
                              "music_lm": {"group_by": 2}, "valle": {"delays": [0] * (n_q - 1)}},
        "classifier_free_guidance": {"training_dropout": 0.2 if melody else 0.3, "inference_coef": 3.0},
        "attribute_dropout": {"args": {"active_on_eval": False}, "text": {},
                              "wav": {"self_wav": 0.5} if melody else {}},
        "fuser": fuser,
        "conditioners": conditioners,
        "interleave_stereo_codebooks": {"use": stereo, "per_timestep": False},
    }


def encodec_cfg() -> dict:
    """A compression ``xp.cfg`` in the layout of audiocraft's encodec configs, tiny filters."""
    return {
        "device": "cuda", "dtype": "float32", "sample_rate": SAMPLE_RATE, "channels": 1, "solver": "compression",
        "compression_model": "encodec",
        "encodec": {"autoencoder": "seanet", "quantizer": "rvq", "sample_rate": SAMPLE_RATE, "channels": 1,
                    "causal": False, "renormalize": False},
        "seanet": {"dimension": 8, "channels": 1, "causal": False, "n_filters": 2, "n_residual_layers": 1,
                   "ratios": RATIOS, "activation": "ELU", "activation_params": {"alpha": 1.0},
                   "norm": "weight_norm", "norm_params": {}, "kernel_size": 7, "residual_kernel_size": 3,
                   "last_kernel_size": 7, "dilation_base": 2, "pad_mode": "constant", "true_skip": True,
                   "compress": 2, "lstm": 1, "disable_norm_outer_blocks": 0, "encoder": {}, "decoder": {}},
        "rvq": {"n_q": N_Q, "q_dropout": False, "bins": CARD, "decay": 0.99, "kmeans_init": False,
                "kmeans_iters": 50, "threshold_ema_dead_code": 2, "orthogonal_reg_weight": 0.0,
                "orthogonal_reg_active_codes_only": False},
    }


def put_repo(cache: Path, repo_id: str, folder: Path, revision: str = "main") -> Path:
    """Adds ``folder``'s files to the cache as ``repo_id``'s ``revision`` (a branch or tag); returns its snapshot."""
    repo = Path(cache) / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1((repo_id if revision == "main" else f"{repo_id}@{revision}").encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    for file in sorted(Path(folder).iterdir()):
        # The hub's layout: content-addressed blobs, the snapshot links to them.
        blob = hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copyfile(file, repo / "blobs" / blob)
        (snapshot / file.name).symlink_to(Path("..", "..", "blobs", blob))
    return snapshot


@contextlib.contextmanager
def offline_env(cache):
    """Points Hugging Face and audiocraft at ``cache`` with ``HF_HUB_OFFLINE=1`` (restored on exit)."""
    import huggingface_hub.constants as constants

    cache = Path(cache)
    home = cache.parent
    with pytest.MonkeyPatch.context() as mp:
        for var in ("HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE", "AUDIOCRAFT_CACHE_DIR", "HF_HUB_CACHE"):
            mp.delenv(var, raising=False)
        mp.setenv("HF_HOME", str(home))
        mp.setenv("HF_HUB_CACHE", str(cache))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        # huggingface_hub reads these at import time; transformers reads them from there at each call.
        values = {"HF_HOME": str(home), "HF_HUB_CACHE": str(cache), "HUGGINGFACE_HUB_CACHE": str(cache),
                  "HF_HUB_OFFLINE": True, "HF_ASSETS_CACHE": str(home / "assets"),
                  "HF_XET_CACHE": str(home / "xet"), "HF_TOKEN_PATH": str(home / "token"),
                  "HF_STORED_TOKENS_PATH": str(home / "stored_tokens")}
        for name, value in values.items():
            mp.setattr(constants, name, value, raising=False)
        yield cache


def _build_t5(out: Path, seed: int) -> None:
    from transformers import T5Config, T5EncoderModel

    config = T5Config(vocab_size=3 + len(WORDS) + 1 + 100, d_model=T5_DIM, d_kv=8, d_ff=16, num_layers=1,
                      num_decoder_layers=1, num_heads=2, relative_attention_num_buckets=8,
                      relative_attention_max_distance=16, architectures=["T5ForConditionalGeneration"])
    torch.manual_seed(seed)
    T5EncoderModel(config).save_pretrained(out)


def _t5_tokenizer_json(path: Path) -> None:
    """A T5 tokenizer.json like the hub's: Unigram, <pad>=0 </s>=1 <unk>=2, 100 sentinels at the end."""
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [(f"▁{w}", -float(i + 3)) for i, w in enumerate(WORDS)]
    vocab += [(f"<extra_id_{i}>", 0.0) for i in reversed(range(100))]
    tok = Tokenizer(Unigram(vocab, unk_id=2, byte_fallback=False))
    tok.normalizer = normalizers.Sequence([normalizers.Replace(" {2,}", " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.post_processor = processors.TemplateProcessing(single=["$A", "</s>"], pair=["$A", "</s>", "$B", "</s>"],
                                                       special_tokens=[("</s>", 1)])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, _ in vocab[:3] + vocab[-100:]])
    tok.save(str(path))


def _spiece_model(path: Path) -> None:
    """A tiny sentencepiece unigram model with T5's special ids, trained offline from a few lines."""
    import sentencepiece as spm

    with tempfile.TemporaryDirectory() as tmp:
        text = Path(tmp) / "text.txt"
        text.write_text("\n".join(" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))))
        spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(Path(tmp) / "spiece"), vocab_size=40,
                                       model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                       minloglevel=2)
        shutil.copyfile(Path(tmp) / "spiece.model", path)


def _spread_codebooks(emb: torch.Tensor, codebooks) -> None:
    """Sets each residual codebook to jittered frames of its residual, so audio maps to varied codes.

    Args:
        emb: encoder output ``[D, T]``.
        codebooks: ``(embed [bins, D] buffer, quantize(x [N, D]) -> indices)`` per residual level.
    """
    for embed, quantize in codebooks:
        picks = emb.T[torch.randint(emb.shape[-1], (embed.shape[0],))]
        embed.copy_(picks + 0.1 * emb.std() * torch.randn_like(picks))
        emb = emb - embed[quantize(emb.T)].T


def _audiocraft_encodec(seed: int):
    from audiocraft.models import builders
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(encodec_cfg())
    cfg.device = "cpu"
    torch.manual_seed(seed)
    model = builders.get_compression_model(cfg).eval()
    with torch.no_grad():
        codebooks = rvq_codebooks(model.quantizer)
        _spread_codebooks(model.encoder(torch.randn(1, 1, SAMPLE_RATE // 2))[0],
                          [(c.embed, lambda x, c=c: c.quantize(x)) for c in codebooks])
        for c in codebooks:
            c.inited.fill_(True)
            c.embed_avg.copy_(c.embed)
    return model


def _build_encodec(out: Path, seed: int) -> None:
    from transformers import EncodecConfig, EncodecFeatureExtractor, EncodecModel

    bandwidth = N_Q * SAMPLE_RATE / (RATIOS[0] * RATIOS[1] * RATIOS[2] * RATIOS[3]) * 11 / 1000  # log2(2048) bits
    config = EncodecConfig(target_bandwidths=[round(bandwidth, 6)], sampling_rate=SAMPLE_RATE, audio_channels=1,
                           normalize=False, chunk_length_s=None, overlap=None, hidden_size=8, num_filters=2,
                           num_residual_layers=1, upsampling_ratios=RATIOS, norm_type="weight_norm",
                           use_causal_conv=False, num_lstm_layers=1, codebook_size=CARD, use_conv_shortcut=False)
    torch.manual_seed(seed)
    model = EncodecModel(config).eval()
    with torch.no_grad():  # codebooks start at zero (the hub's are trained)
        _spread_codebooks(model.encoder(torch.randn(1, 1, SAMPLE_RATE // 2))[0],
                          [(layer.codebook.embed, layer.codebook.quantize) for layer in model.quantizer.layers])
    model.save_pretrained(out)
    EncodecFeatureExtractor(feature_size=1, sampling_rate=SAMPLE_RATE, padding_value=0.0).save_pretrained(out)


def build_hub(cache, seed: int = 0) -> Path:
    """Writes the miniature repositories of the module docstring into the cache folder ``cache``."""
    from audiocraft.models import builders
    from omegaconf import OmegaConf

    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        def repo(repo_id, write):
            folder = Path(tmp) / repo_id
            folder.mkdir(parents=True)
            write(folder)
            put_repo(cache, repo_id, folder)

        def t5(folder, tokenizer):
            _build_t5(folder, seed)
            tokenizer(folder)

        repo(T5, lambda f: t5(f, lambda f: _t5_tokenizer_json(f / "tokenizer.json")))
        repo(SPIECE_T5, lambda f: t5(f, lambda f: _spiece_model(f / "spiece.model")))
        repo(ENCODEC, lambda f: _build_encodec(f, seed))

        pointer = {"pretrained": ENCODEC, "exported": True, "version": "1.0.0"}

        def lm_state(cfg: dict):
            built = OmegaConf.create(cfg)
            # Random weights from the layers' default init: the real 'gaussian' init costs seconds.
            built.device = "cpu"
            built.transformer_lm.update(weight_init=None, depthwise_init=None, zero_bias_init=False)
            torch.manual_seed(seed)
            with offline_env(cache):  # the LM's T5 conditioner loads t5-base from this cache
                return builders.get_lm_model(built).state_dict()

        def musicgen(folder, cfg, state, codec_pkg, yaml: bool):
            # Meta's releases pickle the DictConfig; audiocraft's export_lm writes YAML.
            xp_cfg = OmegaConf.to_yaml(OmegaConf.create(cfg)) if yaml else OmegaConf.create(cfg)
            torch.save({"best_state": state, "xp.cfg": xp_cfg, "version": "1.0.0", "exported": True},
                       folder / "state_dict.bin")
            torch.save(codec_pkg, folder / "compression_state_dict.bin")
            if not yaml:  # Meta's repositories also hold the transformers port (its config here)
                transformers_config(folder, "musicgen")

        def transformers_config(folder, model_type):
            (folder / "config.json").write_text(json.dumps(
                {"model_type": model_type, "architectures": [f"{model_type.title().replace('_', '')}"
                                                             "ForConditionalGeneration"]}, indent=2))

        mono, stereo = musicgen_cfg(), musicgen_cfg(2 * N_Q, stereo=True)
        mono_state = lm_state(mono)
        repo(MUSICGEN, lambda f: musicgen(f, mono, mono_state, pointer, yaml=False))
        repo(STEREO, lambda f: musicgen(f, stereo, lm_state(stereo), pointer, yaml=False))
        codec = {"best_state": _audiocraft_encodec(seed).state_dict(),
                 "xp.cfg": OmegaConf.to_yaml(OmegaConf.create(encodec_cfg())), "version": "1.3.0",
                 "exported": True}
        repo(FINETUNE, lambda f: musicgen(f, mono, mono_state, codec, yaml=True))

        def melody(folder):
            # The melody LM is never built (refused from its config): its weights are left out.
            torch.save({"best_state": {}, "xp.cfg": OmegaConf.create(musicgen_cfg(melody=True)),
                        "version": "1.0.0", "exported": True}, folder / "state_dict.bin")
            torch.save(pointer, folder / "compression_state_dict.bin")
            transformers_config(folder, "musicgen_melody")

        repo(MELODY, melody)
    return cache


@pytest.fixture(scope="session")
def hub_cache(tmp_path_factory) -> Path:
    """The miniature hub cache, built once per test session (its folder is ``HF_HUB_CACHE``).

    Each module that imports this fixture gets its own copy of it from pytest; the
    marker file makes them share one build.
    """
    cache = tmp_path_factory.getbasetemp() / "hf_home" / "hub"
    if not (cache / ".complete").is_file():
        shutil.rmtree(cache, ignore_errors=True)
        build_hub(cache)
        (cache / ".complete").touch()
    return cache


@pytest.fixture
def offline_hub(hub_cache):
    """The miniature hub cache, made the process's Hugging Face cache with ``HF_HUB_OFFLINE=1`` for one test."""
    with offline_env(hub_cache):
        yield hub_cache


__all__ = ["build_hub", "hub_cache", "offline_env", "offline_hub", "musicgen_cfg", "encodec_cfg", "put_repo",
           "MUSICGEN", "FINETUNE", "STEREO", "MELODY", "ENCODEC", "T5", "SPIECE_T5"]
