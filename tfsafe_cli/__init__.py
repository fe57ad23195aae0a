"""The ``tfsafe`` command line front end: ``tfsafe <command> [--flags]``.

This package parses and answers help and flag errors with absl alone, before anything imports
TensorFlow (``import tfsafe`` does, and takes seconds), so ``tfsafe compress --help`` or a
mistyped flag answers at once. Each command has its own absl ``FlagValues``
(:mod:`tfsafe_cli.flagsets`); only after its flags parsed does :func:`main` import the command
implementations in :mod:`tfsafe.cli` (with TensorFlow's logs diverted, :mod:`tfsafe_cli.quiet`).

Exit status: 0 success, 2 a bad flag, file or input (one ``tfsafe: error: ...`` line),
130 interrupted.
"""

import importlib
import os
import re
import sys

from absl import flags

from tfsafe_cli.flagsets import COMMANDS, COMMON_FLAGS, flag_values
from tfsafe_cli.quiet import quiet

__all__ = ["main", "run", "usage", "command_help"]

HELP_ARGS = ("--help", "-h", "--helpshort", "--helpfull", "-help", "--help=true")


def usage():
    """The top-level help: commands and how to get each one's flags."""
    lines = ["usage: tfsafe <command> [--flags]", "", "commands:"]
    lines += [f"  {name:<9} {text}" for name, (text, _) in COMMANDS.items()]
    lines += ["", "tfsafe <command> --help lists that command's flags and their defaults."]
    return "\n".join(lines)


def _flag_line(flag):
    values = getattr(flag.parser, "enum_values", None)
    kind = f"one of {'|'.join(values)}" if values else flag.flag_type()
    helptext = flag.help.split(": ", 1)[1] if values and flag.help.startswith("<") else flag.help
    if flag.default is None:
        default = "none"
    elif isinstance(flag.default, list):
        default = ",".join(str(v) for v in flag.default) or "none"
    else:
        default = flag.default_as_str.strip("'")
    return f"  --{flag.name} ({kind}; default: {default})\n      {helptext}"


def command_help(command):
    """Help of one command: what it does, then its own flags (with defaults), then the common ones."""
    fv = flag_values(command)
    own = [fv[name] for name in fv if name not in COMMON_FLAGS]
    lines = [f"usage: tfsafe {command} [--flags]", "", COMMANDS[command][0], "", "flags:"]
    lines += [_flag_line(flag) for flag in own]
    lines += ["", "common flags:"] + [_flag_line(fv[name]) for name in COMMON_FLAGS]
    return "\n".join(lines)


def _error(message, command=None):
    hint = f" (tfsafe {command} --help lists the flags)" if command else ""
    text = " ".join(str(message).split())
    # absl prefixes a validator's message with "flag --name=None: "; ours already names the flag.
    text = re.sub(r"^flag --(\w+)=.*?: (--\1 )", r"\2", text)
    text = re.sub(r"^flags (\w+=\S*, )*\w+=\S*: ", "", text)  # ... and a multi-flag one's with "flags a=1, b=2: "
    print(f"tfsafe: error: {text}{hint}", file=sys.stderr)
    return 2


def parse(argv):
    """``(command, FlagValues)`` from ``argv`` = ``["tfsafe", command, flags...]``.

    Returns ``(None, exit_status)`` when help was printed or the arguments are wrong.
    """
    if len(argv) < 2:
        print(f"tfsafe: error: no command given.\n{usage()}", file=sys.stderr)
        return None, 2
    if argv[1] in HELP_ARGS:
        print(usage())
        return None, 0
    command, args = argv[1], argv[2:]
    if command not in COMMANDS:
        print(f"tfsafe: error: unknown command '{command}'.\n{usage()}", file=sys.stderr)
        return None, 2
    if any(arg in HELP_ARGS for arg in args):
        print(command_help(command))
        return None, 0
    fv = flag_values(command)
    try:
        rest = fv([f"tfsafe {command}", *args])
    except flags.Error as err:
        return None, _error(err, command)
    if len(rest) > 1:
        return None, _error(f"unexpected arguments {rest[1:]}; flags start with --.", command)
    return command, fv


def main(argv=None):
    """Run ``tfsafe`` with ``argv`` (default ``sys.argv``); returns the exit status."""
    argv = list(sys.argv if argv is None else argv)
    command, fv = parse(argv)
    if command is None:
        return fv
    with quiet(fv.verbose):
        # The command implementations import TensorFlow: loaded only now that the flags parsed
        # (the heavy part is loaded only when a command really runs; nothing cyclic here).
        implementation = importlib.import_module("tfsafe.cli")
        errors = importlib.import_module("tfsafe.errors")
        try:
            getattr(implementation, command)(fv)
        except errors.TfsafeError as err:
            return _error(err)
        except KeyboardInterrupt:
            print("tfsafe: interrupted", file=sys.stderr)
            return 130
    return 0


def run():
    """Console-script entry point (``tfsafe``)."""
    try:
        status = main()
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (e.g. `tfsafe --help | head`): not an error of ours. Point stdout
        # at devnull so the interpreter's final flush does not raise again (Python's signal docs).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        status = 0
    sys.exit(status)
