"""Env files read exactly as systemd's ``EnvironmentFile=`` reads them (systemd.exec(5)).

The daemon's unit loads ``/etc/agegate/agegate.env`` with ``EnvironmentFile=``, and
``agegate-edge check --env-file`` must read the same file the same way: a reader that is more
lenient (python-dotenv takes ``export``, ``VALUE # comment`` and shell quoting) would pass a file
whose values differ, or are dropped, under systemd. This is a port of systemd's own parser
(``parse_env_file_internal`` in src/basic/env-file.c): a state machine over the file's characters.

What systemd does with each line:

- Lines whose first non-blank character is ``#`` or ``;`` are comments; a ``#`` later on a line
  is part of the value (``A=1 # one`` sets ``A`` to ``1 # one``).
- ``KEY=VALUE``; blanks around the key and around an unquoted value are dropped, blanks inside
  kept. A line without ``=`` is ignored, and so is an assignment whose name is not a valid
  variable name (``export A=1`` names ``export A``).
- Unquoted: a backslash keeps the next character (``\\\\`` is one backslash); a backslash at the
  end of a line joins the next line.
- ``'…'``: verbatim, may span lines. ``"…"``: may span lines; backslash before ``"``, ``\\``,
  `````` or ``$`` keeps that character, before a newline joins lines, before anything else is
  kept with the character. Text after a closing quote is appended (``A="x"y`` is ``xy``).
- No ``$VAR`` expansion.

:func:`parse_env_file` returns the values systemd would set and a list of problems: lines systemd
ignores (a setting written there would silently not apply), an unclosed quote (the rest of the
file becomes one value), and a comment ending in a backslash (systemd before v254 continues the
comment on the next line, later versions do not).
"""

from __future__ import annotations

import re
from pathlib import Path

NEWLINE = "\n\r"
WHITESPACE = " \t\n\r"
COMMENTS = "#;"
SHELL_NEED_ESCAPE = '"\\`$'
# systemd's env_name_is_valid: a C identifier-like name (letters, digits, underscore; no leading digit).
VALID_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def parse_env_file(path: str | Path) -> tuple[dict[str, str], list[str]]:
    """(values, problems) for the file at ``path``; a missing or unreadable file raises OSError."""
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return {}, [f"{path}: not UTF-8 text (byte {exc.start}); systemd ignores assignments that are not"]
    return parse_env_text(text, str(path))


def parse_env_text(text: str, where: str = "env file") -> tuple[dict[str, str], list[str]]:
    values: dict[str, str] = {}
    problems: list[str] = []
    state = "PRE_KEY"
    key: list[str] = []
    value: list[str] = []
    line = 1
    key_line = 1
    quote_line = 0
    last_key_ws: int | None = None  # where trailing blanks of the key start
    last_value_ws: int | None = None  # where trailing blanks of an unquoted value start

    def push(chomp_value: bool) -> None:
        name = "".join(key[:last_key_ws] if last_key_ws is not None else key)
        val = "".join(value[:last_value_ws] if chomp_value and last_value_ws is not None else value)
        if not VALID_NAME.fullmatch(name):
            hint = " (no `export` in an env file)" if name.startswith("export ") else ""
            problems.append(f"{where}:{key_line}: {name!r} is not a variable name{hint}: systemd ignores this line")
            return
        values[name] = val

    for c in text:
        if state == "PRE_KEY":
            if c in COMMENTS:
                state = "COMMENT"
            elif c not in WHITESPACE:
                state, key, value, last_key_ws, key_line = "KEY", [c], [], None, line
        elif state == "KEY":
            if c in NEWLINE:
                problems.append(f"{where}:{key_line}: no '=' in {''.join(key).strip()!r}: systemd ignores this line")
                state = "PRE_KEY"
            elif c == "=":
                state, last_value_ws = "PRE_VALUE", None
            else:
                if c not in WHITESPACE:
                    last_key_ws = None
                elif last_key_ws is None:
                    last_key_ws = len(key)
                key.append(c)
        elif state == "PRE_VALUE":
            if c in NEWLINE:
                push(chomp_value=False)
                state = "PRE_KEY"
            elif c == "'":
                state, quote_line = "SINGLE_QUOTE_VALUE", line
            elif c == '"':
                state, quote_line = "DOUBLE_QUOTE_VALUE", line
            elif c == "\\":
                state = "VALUE_ESCAPE"
            elif c not in WHITESPACE:
                state = "VALUE"
                value.append(c)
        elif state == "VALUE":
            if c in NEWLINE:
                push(chomp_value=True)
                state = "PRE_KEY"
            elif c == "\\":
                state, last_value_ws = "VALUE_ESCAPE", None
            else:
                if c not in WHITESPACE:
                    last_value_ws = None
                elif last_value_ws is None:
                    last_value_ws = len(value)
                value.append(c)
        elif state == "VALUE_ESCAPE":
            state = "VALUE"
            if c not in NEWLINE:  # an escaped newline joins the lines
                value.append(c)
        elif state == "SINGLE_QUOTE_VALUE":
            if c == "'":
                state = "PRE_VALUE"
            else:
                value.append(c)
        elif state == "DOUBLE_QUOTE_VALUE":
            if c == '"':
                state = "PRE_VALUE"
            elif c == "\\":
                state = "DOUBLE_QUOTE_VALUE_ESCAPE"
            else:
                value.append(c)
        elif state == "DOUBLE_QUOTE_VALUE_ESCAPE":
            state = "DOUBLE_QUOTE_VALUE"
            if c in SHELL_NEED_ESCAPE:
                value.append(c)
            elif c != "\n":  # backslash-newline joins the lines
                value += ["\\", c]
        elif state == "COMMENT":
            if c == "\\":
                state = "COMMENT_ESCAPE"
            elif c in NEWLINE:
                state = "PRE_KEY"
        elif state == "COMMENT_ESCAPE":
            if c in NEWLINE:
                problems.append(f"{where}:{line}: a comment ending in a backslash: systemd before v254 reads the "
                                "next line as part of the comment, later versions do not; remove the backslash")
                state = "PRE_KEY"
            else:
                state = "COMMENT"
        if c == "\n":
            line += 1

    if state in ("SINGLE_QUOTE_VALUE", "DOUBLE_QUOTE_VALUE", "DOUBLE_QUOTE_VALUE_ESCAPE"):
        problems.append(f"{where}:{quote_line}: the quote opened here is never closed: systemd reads the rest of "
                        f"the file into {''.join(key).strip()}")
    if state in ("PRE_VALUE", "VALUE", "VALUE_ESCAPE", "SINGLE_QUOTE_VALUE", "DOUBLE_QUOTE_VALUE",
                 "DOUBLE_QUOTE_VALUE_ESCAPE"):
        push(chomp_value=state == "VALUE")
    elif state == "KEY":
        problems.append(f"{where}:{key_line}: no '=' in {''.join(key).strip()!r}: systemd ignores this line")
    return values, problems
