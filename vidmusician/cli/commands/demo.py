"""`vidmusician demo`: a web page (Gradio) to score a video in the browser."""

from __future__ import annotations

import os
import sys
import time

from ...errors import ConfigError

HELP = "serve a web page that scores a video: drop a video, get it back with music and the alignment plot"


def add_arguments(parser) -> None:
    from ...demo.scoring import DEFAULT_MAX_DURATION

    parser.add_argument("--adapter", metavar="DIR|ORG/NAME[@REV]",
                        help="adapter folder or Hugging Face Hub id; without one the music is the backbone's")
    parser.add_argument("--backbone", metavar="NAME|PATH|tiny",
                        help="as for `vidmusician generate` (default: the adapter's, or facebook/musicgen-small)")
    parser.add_argument("--encoder", metavar="SPEC|tiny",
                        help="visual encoder (default: the adapter's, or ViT-B-32:openai)")
    parser.add_argument("--device", metavar="DEV", help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--host", default="127.0.0.1", metavar="ADDR",
                        help="address to listen on (default 127.0.0.1, this machine only; 0.0.0.0: the network)")
    parser.add_argument("--port", type=int, default=7860, metavar="N", help="port (default 7860)")
    parser.add_argument("--share", action="store_true",
                        help="also serve through a temporary public gradio.live link (needs internet access)")
    parser.add_argument("--max-duration", type=float, default=DEFAULT_MAX_DURATION, metavar="S",
                        help=f"longest video (or duration) a visitor may ask for (default {DEFAULT_MAX_DURATION:g} s)")
    parser.add_argument("--no-examples", action="store_true", help="do not offer the synthetic example clips")


def run(args) -> int:
    from ...demo.scoring import Scorer

    if not 0 < args.port < 65536:
        raise ConfigError(f"--port must be between 1 and 65535, got {args.port}")
    _require_gradio()
    _check_port(args.host, args.port)
    # Models first: a bad adapter, backbone or encoder fails here, before the page is up.
    scorer = Scorer(adapter=args.adapter, backbone=args.backbone, encoder=args.encoder, device=args.device,
                    max_duration=args.max_duration)
    try:
        # Read by gradio when it is imported: no telemetry or version check, and its
        # uploads and cached outputs go under the scorer's folder, removed on exit.
        os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
        os.environ["GRADIO_TEMP_DIR"] = str(scorer.workdir / "gradio")
        from ...demo import build_app, write_examples

        examples = None if args.no_examples else write_examples(scorer.workdir / "examples")
        app = build_app(scorer, examples)
        print(f"vidmusician demo: serving on http://{args.host}:{args.port} (Ctrl+C stops it)",
              file=sys.stderr, flush=True)
        # The wait is ours, not gradio's: gradio's catches Ctrl+C and prints a line of its own.
        # Here Ctrl+C and SIGTERM (the CLI's Terminated) close the server and reach the CLI,
        # whose one line says so, with exit status 130 / 143 as for every command.
        app.launch(server_name=args.host, server_port=args.port, share=args.share, ssr_mode=False,
                   mcp_server=False, quiet=True, allowed_paths=[str(scorer.workdir)], prevent_thread_lock=True)
        try:
            while app.is_running:
                time.sleep(0.1)
        finally:
            app.close(verbose=False)
    finally:
        scorer.close()  # a job still running stops at its next step first
    return 0


def _require_gradio() -> None:
    """Fails in one line before any model loads when the page's library is missing."""
    import importlib.util

    try:
        found = importlib.util.find_spec("gradio") is not None
    except ValueError:  # a module entry of None (blocked) has no spec
        found = False
    if not found:
        raise ConfigError("the demo page needs gradio: `pip install 'vidmusician[demo]'` "
                          "(`make setup` installs it)")


def _check_port(host: str, port: int) -> None:
    """Fails in one line, before any model loads, when the address is taken or not this machine's."""
    import errno
    import socket

    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds it
            s.bind((host, port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(f"--port {port}: already in use on {host}; pick another port") from None
        raise ConfigError(f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc})") from None
