"""The guided `create` dialog: a few questions with defaults, a summary with the cost, a yes/no.

Answers are checked by the same validators the CLI uses (config.parse_*), so a bad
answer is explained and asked again instead of failing later.
"""
from __future__ import annotations

from prompt_toolkit.completion import Completer, Completion, WordCompleter
from prompt_toolkit.validation import ValidationError, Validator

from .. import catalog, userdirs
from ..config import (
    DEFAULT_INSTANCE_TYPES,
    STORAGE_KINDS,
    ClusterSpec,
    parse_count,
    parse_instance_types,
    validate_name,
)
from ..errors import UserError


class _Check(Validator):
    """Wrap one of our parse functions (which raise UserError) as a prompt_toolkit validator."""

    def __init__(self, parse):
        self.parse = parse

    def validate(self, document):
        try:
            self.parse(document.text.strip())
        except UserError as err:
            raise ValidationError(message=str(err), cursor_position=len(document.text)) from None


class _TypeCompleter(Completer):
    def __init__(self, spot: bool):
        self.spot = spot

    def get_completions(self, document, complete_event):
        word = document.text_before_cursor.rpartition(",")[2]
        for t in sorted(catalog.INSTANCE_TYPES):
            if t.startswith(word):
                yield Completion(
                    t, start_position=-len(word), display_meta=catalog.describe(t, self.spot)
                )


def _lifecycle(text: str) -> bool:
    t = text.strip().lower()
    if t in ("spot", "s"):
        return True
    if t in ("on-demand", "ondemand", "od", "o"):
        return False
    raise UserError(f"{text!r} is neither spot nor on-demand", "answer spot or on-demand")


def _storage(text: str) -> str:
    if text.strip() not in STORAGE_KINDS:
        raise UserError(f"unknown storage {text!r}", f"choose one of {', '.join(STORAGE_KINDS)}")
    return text.strip()


def summary(spec: ClusterSpec) -> str:
    first = spec.instance_types[0]
    cpus = catalog.vcpus(first)
    est = catalog.estimate_per_hour(spec.instance_types, spec.nodes, spec.spot)
    cores = f", {cpus} vCPU each, {cpus * spec.nodes} in all" if cpus else ""
    cost = f"about ${est:.3f}/h" if est is not None else "cost unknown for these types"
    return (f"cluster {spec.name}: {spec.nodes} x {','.join(spec.instance_types)}{cores}, "
            f"{'spot' if spec.spot else 'on-demand'}, storage {spec.storage}; {cost}"
            + (" (spot prices vary)" if spec.spot else ""))


def run_create_dialog(ask, confirm, args):
    """Fill the missing create arguments by asking; returns the completed args or None (cancelled).

    `ask(message, default, validator, completer)` returns the answer text; `confirm(question)`
    returns a bool. Ctrl-C or Ctrl-D cancels the whole dialog."""
    try:
        defaults = {**userdirs.user_defaults()}
        if args.template:
            from ..commands import read_template
            defaults.update(read_template(args.template))
        name = ask("cluster name: ", args.name or "demo", _Check(validate_name), None).strip()
        nodes = ask("nodes (master included): ", str(args.nodes or defaults.get("nodes", 2)),
                    _Check(parse_count), None).strip()
        spot_default = args.spot if args.spot is not None else defaults.get("spot", True)
        spot = _lifecycle(ask("spot or on-demand: ", "spot" if spot_default else "on-demand",
                              _Check(_lifecycle), WordCompleter(["spot", "on-demand"])))
        types_default = (
            args.instance_type or defaults.get("instance_types") or DEFAULT_INSTANCE_TYPES
        )
        if isinstance(types_default, str):
            types_default = parse_instance_types(types_default)
        hint = catalog.describe(types_default[0], spot)
        types = ask(
            f"instance types, best first ({types_default[0]}: {hint}): ",
            ",".join(types_default),
            _Check(parse_instance_types),
            _TypeCompleter(spot),
        ).strip()
        storage = ask("storage (efs, s3fs, none): ", args.storage or defaults.get("storage", "efs"),
                      _Check(_storage), WordCompleter(list(STORAGE_KINDS))).strip()
    except (KeyboardInterrupt, EOFError):
        return None
    args.name, args.nodes, args.spot = name, parse_count(nodes), spot
    args.instance_type, args.storage = parse_instance_types(types), storage
    spec = ClusterSpec(
        name=name, nodes=args.nodes, instance_types=args.instance_type, spot=spot, storage=storage
    )
    try:
        return args if confirm(summary(spec) + "\ncreate it?") else None
    except (KeyboardInterrupt, EOFError):
        return None
