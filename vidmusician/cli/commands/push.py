"""`vidmusician push DIR org/name`: an adapter folder to the Hugging Face Hub, with a model card."""

from __future__ import annotations

import sys

HELP = "upload an adapter folder (safetensors + adapter_config.json only) to the Hugging Face Hub with a model card"


def add_arguments(parser) -> None:
    parser.add_argument("adapter", metavar="DIR", help="the adapter folder (a training run's OUTPUT/adapter)")
    parser.add_argument("repo_id", metavar="ORG/NAME", help="the Hub repository (created if missing)")
    parser.add_argument("--private", action="store_true", help="create the repository private")
    parser.add_argument("--revision", "--branch", dest="revision", metavar="BRANCH",
                        help="commit to this branch (created if missing; default: main)")
    parser.add_argument("--report", metavar="EVAL.json",
                        help="an eval report (`vidmusician eval --output`) whose metrics go into the card")
    parser.add_argument("--run", metavar="RUN_DIR",
                        help="the training run folder whose recipe and steps go into the card "
                             "(default: the folder above DIR when it is one)")
    parser.add_argument("--license", default="cc-by-nc-4.0", metavar="ID",
                        help="the card's license (default cc-by-nc-4.0, that of MusicGen's weights)")
    parser.add_argument("-m", "--message", metavar="TEXT", help="commit message")


def run(args) -> int:
    from ...hub import push_adapter

    url = push_adapter(args.adapter, args.repo_id, private=args.private or None, revision=args.revision,
                       report=args.report, commit_message=args.message, license=args.license, run=args.run)
    print(f"pushed {args.adapter} to {args.repo_id}: {url}", file=sys.stderr)
    return 0
