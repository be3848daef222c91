"""Readers for the build files the CI tests check: Dockerfiles, .dockerignore, constraints.txt.

Each implements just enough of its format for the files in this repository, and says so.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from packaging.utils import NormalizedName, canonicalize_name

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case, e.g. "RUN"
    arguments: str  # continuation lines joined, comments removed


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def env(self) -> dict[str, str]:
        """Variables set by `ENV key=value ...` instructions (the only ENV form used here)."""
        variables: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for word in shlex.split(instruction.arguments):
                key, separator, value = word.partition("=")
                assert separator, f"ENV {instruction.arguments!r}: use the key=value form"
                variables[key] = value
        return variables


def _instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) of each instruction: comment lines dropped, continuations joined."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # Docker also allows comment lines inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued instruction"
    out = []
    for line in logical:
        keyword, _, arguments = line.partition(" ")
        out.append((keyword.upper(), arguments.strip()))
    return out


def parse_dockerfile(text: str) -> list[Stage]:
    """Stages of a Dockerfile; the ARGs before the first FROM are in `global_args`."""
    stages: list[Stage] = []
    for keyword, arguments in _instructions(text):
        if keyword == "FROM":
            words = arguments.split()
            has_name = len(words) == 3 and words[1].upper() == "AS"
            stages.append(Stage(base=words[0], name=words[2] if has_name else None))
            continue
        if not stages and keyword == "ARG":
            continue
        assert stages, f"{keyword} before the first FROM"
        stages[-1].instructions.append(Instruction(keyword, arguments))
    return stages


def arg_defaults(instructions: list[Instruction]) -> dict[str, str | None]:
    """`ARG name[=default]` declarations (one per instruction, the form used here)."""
    args: dict[str, str | None] = {}
    for instruction in instructions:
        if instruction.keyword == "ARG":
            name, separator, default = instruction.arguments.partition("=")
            args[name] = default if separator else None
    return args


def global_args(text: str) -> dict[str, str | None]:
    """The ARGs declared before the first FROM: the only ones a FROM line can use."""
    before_from: list[Instruction] = []
    for keyword, arguments in _instructions(text):
        if keyword == "FROM":
            break
        before_from.append(Instruction(keyword, arguments))
    return arg_defaults(before_from)


def resolve_base(base: str, args: dict[str, str | None]) -> str:
    """A FROM image with `${NAME}` / `$NAME` replaced by the global ARG defaults."""

    def default(match: re.Match[str]) -> str:
        value = args.get(match.group(1) or match.group(2))
        assert value is not None, f"FROM {base}: {match.group(0)} has no default"
        return value

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", default, base)


def copy_sources(instruction: Instruction) -> tuple[list[str], str | None]:
    """Sources of a COPY (all words but the last) and its --from stage, if any."""
    words = shlex.split(instruction.arguments)
    flags = [w for w in words if w.startswith("--")]
    paths = [w for w in words if not w.startswith("--")]
    from_stage = next((f.split("=", 1)[1] for f in flags if f.startswith("--from=")), None)
    return paths[:-1], from_stage


class DockerIgnore:
    """The build-context filter of a .dockerignore file (BuildKit semantics).

    Patterns use Go filepath.Match syntax plus `**`; a path is excluded when the last pattern
    matching it, or one of its parent directories, is not a `!` exception.
    """

    def __init__(self, text: str) -> None:
        self._rules: list[tuple[re.Pattern[str], bool]] = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            include = line.startswith("!")
            pattern = line[1:].strip() if include else line
            pattern = pattern.removeprefix("./").strip("/")
            self._rules.append((re.compile(_glob_to_regex(pattern)), include))

    def in_context(self, path: str) -> bool:
        candidates = _self_and_parents(path)
        in_context = True
        for regex, include in self._rules:
            if any(regex.fullmatch(candidate) for candidate in candidates):
                in_context = include
        return in_context


def _self_and_parents(path: str) -> list[str]:
    parts = path.strip("/").split("/")
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def _glob_to_regex(pattern: str) -> str:
    regex = ""
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**/", i):
            regex += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            regex += ".*"
            i += 2
        elif char == "*":
            regex += "[^/]*"
            i += 1
        elif char == "?":
            regex += "[^/]"
            i += 1
        else:
            regex += re.escape(char)
            i += 1
    return regex


def read_constraints(path: Path) -> dict[NormalizedName, str]:
    """`name==version` pins of constraints.txt, by canonical name."""
    pins: dict[NormalizedName, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, separator, version = line.partition("==")
        if not (separator and version):
            raise ValueError(f"constraints.txt: {line!r} is not an exact pin")
        pins[canonicalize_name(name)] = version.strip()
    return pins
