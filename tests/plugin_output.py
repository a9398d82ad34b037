"""The output of a monitoring plugin read by the rules of the monitoring-plugins
development guidelines, as Icinga and Nagios read it:

    TEXT OUTPUT | OPTIONAL PERFDATA
    LONG TEXT LINE 1
    ...
    LONG TEXT LINE N | PERFDATA LINE 2
    PERFDATA LINE 3

Performance data is space separated `'label'=value[UOM];[warn];[crit];[min];[max]`: a
label is quoted when it holds spaces (a quote in it doubled) and has no `=`; the value
is a number or `U`; UOM is one of s, ms, us, %, B, KB, MB, TB, c or none; warn, crit,
min and max are numbers (ranges for warn and crit) in the value's unit, trailing empty
fields may be left out. Anything else fails the parse with AssertionError.
"""

import re
from dataclasses import dataclass

STATES = {0: "OK", 1: "WARNING", 2: "CRITICAL", 3: "UNKNOWN"}
UNITS = {"", "s", "ms", "us", "%", "B", "KB", "MB", "TB", "c"}
_LABEL = r"(?:'(?:[^']|'')+'|[^'=\s]+)"
_ITEM = re.compile(rf"({_LABEL})=(\S*)")
_VALUE = re.compile(r"^(-?\d+(?:\.\d+)?|U)([a-zA-Z%]*)$")
_NUMBER = re.compile(r"^-?\d+(?:\.\d+)?$")
_RANGE = re.compile(r"^@?(?:~|-?\d+(?:\.\d+)?)?:?(?:-?\d+(?:\.\d+)?)?$")


@dataclass(frozen=True)
class Perf:
    value: float | None  # None: U
    unit: str
    warn: str
    crit: str
    minimum: str
    maximum: str


@dataclass(frozen=True)
class PluginOutput:
    service: str
    state: str
    text: str
    long_text: list[str]
    perfdata: dict[str, Perf]


def parse_plugin_output(output: str, exit_code: int) -> PluginOutput:
    lines = output.rstrip("\n").split("\n")
    assert lines and lines[0], "a plugin prints a status line first"
    text, _, perf_parts = lines[0].partition("|")
    perf = [perf_parts]
    long_text: list[str] = []
    for number, line in enumerate(lines[1:], start=1):
        head, bar, tail = line.partition("|")
        long_text.append(head.rstrip())
        if bar:
            perf += [tail, *lines[number + 1 :]]
            break
    match = re.match(r"^(\S+) (OK|WARNING|CRITICAL|UNKNOWN) - (.+)$", text.rstrip())
    assert match, f"status line {text!r} is not 'SERVICE STATE - text'"
    assert match.group(2) == STATES[exit_code], f"exit {exit_code} but {match.group(2)}"
    return PluginOutput(
        match.group(1), match.group(2), match.group(3), long_text, parse_perfdata(" ".join(perf))
    )


def parse_perfdata(text: str) -> dict[str, Perf]:
    found: dict[str, Perf] = {}
    rest = text.strip()
    while rest:
        item = _ITEM.match(rest)
        assert item, f"performance data {rest!r} is not 'label'=value;warn;crit;min;max"
        label = item.group(1)
        if label.startswith("'"):
            label = label[1:-1].replace("''", "'")
        found[label] = _perf(item.group(2))
        rest = rest[item.end() :].lstrip()
    return found


def _perf(text: str) -> Perf:
    fields = text.split(";")
    assert 1 <= len(fields) <= 5, f"{text!r}: value;warn;crit;min;max at most"
    fields += [""] * (5 - len(fields))
    value = _VALUE.match(fields[0])
    assert value, f"{text!r}: the value is not a number or U"
    assert value.group(2) in UNITS, f"{text!r}: unit {value.group(2)!r} is not a plugin unit"
    for threshold in fields[1:3]:
        assert _RANGE.match(threshold), f"{text!r}: {threshold!r} is not a threshold"
    for bound in fields[3:5]:
        assert not bound or _NUMBER.match(bound), f"{text!r}: {bound!r} is not a number"
    number = None if value.group(1) == "U" else float(value.group(1))
    return Perf(number, value.group(2), fields[1], fields[2], fields[3], fields[4])
