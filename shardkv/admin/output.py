"""Printing as etcdctl prints: its tables (olekukonko/tablewriter as etcdctl sets it up), its
``-w json`` (Go's encoding/json of the gogoproto structs: the .proto field names, zero values
omitted, 64-bit integers as numbers, bytes as base64) and its ``-w simple`` lines."""
from __future__ import annotations

import base64
import json
import math
from typing import Any

import click
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

FORMATS = ("table", "json", "simple")


def go_json(msg: Message) -> dict[str, Any]:
    """The value Go's json.Marshal gives a gogoproto message: every field tagged
    ``json:"<proto name>,omitempty"`` (so zero scalars, empty lists and unset messages are left
    out), enums as their numbers, bytes base64-encoded."""
    out: dict[str, Any] = {}
    for fd in msg.DESCRIPTOR.fields:
        value = getattr(msg, fd.name)
        if fd.is_repeated:
            if len(value):
                out[fd.name] = [_go_value(fd, v) for v in value]
        elif fd.type == FieldDescriptor.TYPE_MESSAGE:
            if msg.HasField(fd.name):
                out[fd.name] = go_json(value)
        elif value:
            out[fd.name] = _go_value(fd, value)
    return out


def _go_value(fd: FieldDescriptor, value: Any) -> Any:
    if fd.type == FieldDescriptor.TYPE_MESSAGE:
        return go_json(value)
    if fd.type == FieldDescriptor.TYPE_BYTES:
        return base64.b64encode(value).decode()
    return value


def dumps(value: Any) -> str:
    """Go's json.Marshal text: compact, UTF-8, and <, >, &, U+2028, U+2029 escaped."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                    ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text


def print_json(value: Any) -> None:
    click.echo(dumps(value))


def table(header: list[str], rows: list[list[str]]) -> str:
    """tablewriter's rendering with etcdctl's settings: upper-cased centred header, cells
    right-aligned, one space of padding, +---+ borders."""
    titles = [h.upper().replace("_", " ") for h in header]
    widths = [max([len(t)] + [len(r[i]) for r in rows]) for i, t in enumerate(titles)]
    line = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def centre(text: str, width: int) -> str:
        left = (width - len(text)) // 2
        return " " * left + text + " " * (width - len(text) - left)

    out = [line, "|" + "|".join(f" {centre(t, w)} " for t, w in zip(titles, widths)) + "|",
           line]
    out += ["|" + "|".join(f" {c.rjust(w)} " for c, w in zip(r, widths)) + "|" for r in rows]
    out.append(line)
    return "\n".join(out)


def humanize_bytes(n: int) -> str:
    """go-humanize's Bytes: SI units, "20 kB", "1.5 MB"."""
    if n < 10:
        return f"{n} B"
    sizes = ["B", "kB", "MB", "GB", "TB", "PB", "EB"]
    e = min(int(math.floor(math.log(n) / math.log(1000))), len(sizes) - 1)
    val = math.floor(n / 1000**e * 10 + 0.5) / 10
    return f"{val:.0f} {sizes[e]}" if val >= 10 else f"{val:.1f} {sizes[e]}"


def go_duration(seconds: float) -> str:
    """Go's time.Duration.String: "1.39471ms", "5.001625208s", "1m2.5s"."""
    ns = int(round(seconds * 1e9))
    if ns == 0:
        return "0s"
    if ns < 1_000:
        return f"{ns}ns"
    if ns < 1_000_000:
        return _trim(ns / 1e3) + "µs"
    if ns < 1_000_000_000:
        return _trim(ns / 1e6) + "ms"
    hours, rest = divmod(ns, 3600 * 10**9)
    minutes, rest = divmod(rest, 60 * 10**9)
    text = _trim(rest / 1e9) + "s"
    if hours:
        return f"{hours}h{minutes}m{text}"
    return f"{minutes}m{text}" if minutes else text


def _trim(value: float) -> str:
    return f"{value:.9f}".rstrip("0").rstrip(".")


def hex_id(n: int) -> str:
    """A member id as etcd prints it (%x)."""
    return f"{n:x}"
