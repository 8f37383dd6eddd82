"""Reading back what ds-distil wrote: every manifest is untrusted once it is on disk.

A manifest another process, a crash or a user may have changed (a shard directory's manifest.json, a teacher cache's, a
vocabulary's map) is read by `read_checked`: JSON of our format, then checked against a schema of the fields its readers
rely on (types, ranges, required fields, and file names that stay inside their directory) before any file it names is
opened. A JSON file of another format (a DeepSpeed JSON) goes through `read_json` and `check`, the same checks. The first
problem is one line naming the file, the field and the value found.

The schemas are pydantic models in strict mode (no "5" for 5, no 5.0 for an int, no true for 1; NaN and infinities
refused): pydantic is what DeepSpeed validates its own config with. They check; the readers keep the plain dict.
"""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from ds_distil.core.errors import UserError


class Checked(BaseModel):
    """A section of a file we read back: strict types, finite numbers, other keys allowed (and ignored)."""

    model_config = ConfigDict(strict=True, extra="allow", allow_inf_nan=False)


def _inside(name: str) -> str:
    """A file name relative to the manifest's directory that cannot leave it: no absolute path, no `..`, no backslash
    (a Windows separator), no NUL."""
    if not name or "\\" in name or "\0" in name or PurePosixPath(name).is_absolute() or ".." in PurePosixPath(name).parts:
        raise ValueError("names a file outside its directory (a manifest names its files relative to it, without '..')")
    return name


InsideName = Annotated[str, AfterValidator(_inside)]
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Count = Annotated[int, Field(ge=0)]
Positive = Annotated[int, Field(ge=1)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonEmpty = Annotated[str, StringConstraints(min_length=1)]


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if part == "[key]":  # pydantic's mark of a mapping's key: the key itself precedes it
            continue
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out


def _shown(value: Any) -> str:
    text = repr(value) if not isinstance(value, (dict, list)) else json.dumps(value)[:60]
    return text if len(text) <= 60 else text[:57] + "..."


def first_problem(model: type[BaseModel], data: Any) -> str | None:
    """The first way `data` fails `model`, as `field: what is wrong (found VALUE)`, or None."""
    try:
        model.model_validate(data)
    except ValidationError as e:
        errors = e.errors(include_url=False)
        err = errors[0]
        more = f" ({len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        if err["type"] == "missing":
            return f"no '{_loc(err['loc'])}'{more}"
        msg = re.sub(r"a valid dictionary or instance of \w+", "an object (a mapping of names to values)",
                     err["msg"].removeprefix("Value error, "))
        msg = msg[:1].lower() + msg[1:]
        where = f"{_loc(err['loc'])}: " if err["loc"] else ""
        if err["type"] == "value_error" and (isinstance(err["input"], dict) or not err["loc"]):  # our own check: it says what
            return f"{where}{msg}{more}"
        return f"{where}{msg} (found {_shown(err['input'])}){more}"
    return None


def check(model: type[BaseModel], data: Any, where: str | Path, remedy: str) -> None:
    """Refuse `data` (read from `where`) that fails `model`: one line naming the field, then `remedy`."""
    problem = first_problem(model, data)
    if problem is not None:
        raise UserError(f"{where}: {problem}; {remedy}")


def read_json(path: Path, remedy: str) -> Any:
    """JSON from a file we wrote (UTF-8; no NaN or Infinity, which JSON does not have), or a one-line refusal."""

    def no_constant(name: str):
        raise ValueError(f"{name} is not a JSON number")

    try:
        return json.loads(Path(path).read_text(encoding="utf-8"), parse_constant=no_constant)
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise UserError(f"{path} is not valid JSON ({e}); {remedy}") from None


def read_format_json(path: Path, fmt: str, remedy: str, format_remedy: str | None = None) -> dict[str, Any]:
    """A manifest file of ours: JSON holding {"format": fmt, ...}, or a one-line refusal ending with `remedy`
    (`format_remedy` for a file of another format)."""
    data = read_json(path, remedy)
    if not isinstance(data, dict) or data.get("format") != fmt:
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise UserError(f"{path} has format {got!r}, expected {fmt!r}; {format_remedy or remedy}")
    return data


def read_checked(path: Path, fmt: str, model: type[BaseModel], remedy: str, format_remedy: str | None = None) -> dict[str, Any]:
    """A manifest of format `fmt`, every field `model` names checked before the caller opens anything it lists."""
    data = read_format_json(path, fmt, remedy, format_remedy)
    check(model, data, path, remedy)
    return data
