"""The built model's module and parameter names, as the diff writes and reads them.

Every string the diff formats or parses that is a node or parameter name of the built
`CausalLM` (`sublayers.3.members.M.in_proj.weight`) goes through this module, so that the
naming can later come from one plan object instead of string formatting: swap these functions,
and the rest of the package follows. The names are those of `named_parameters()` (equal to the
state dict's keys), as codegen builds them and accounting reports them (`PartCost.module_path`).
"""
from __future__ import annotations

SEP = "."
ALL = "*"


def sublayer(index: int) -> str:
    """The sublayer block; a parallel group's residual gates are its own parameters."""
    return f"sublayers{SEP}{index}"


def sublayer_norm(index: int) -> str:
    """The pre-norm of a sublayer."""
    return f"{sublayer(index)}{SEP}norm"


def member(index: int, symbol: str) -> str:
    """A member module of a sublayer, by its component symbol."""
    return f"{sublayer(index)}{SEP}members{SEP}{symbol}"


def parameter(module: str, key: str) -> str:
    """A parameter's full name: its module's name and its own key."""
    return f"{module}{SEP}{key}"


def everything_under(module: str) -> str:
    """Shorthand for all the parameters of a module: 'sublayers.2.*'."""
    return f"{module}{SEP}{ALL}"


def owner(name: str) -> str:
    """The module a parameter belongs to: 'sublayers.2.members.M', 'sublayers.2.norm',
    'shared.mem', 'embedding'."""
    parts = name.split(SEP)
    if parts[0] == "sublayers" and len(parts) >= 4 and parts[2] == "members":
        return SEP.join(parts[:4])
    if parts[0] in ("sublayers", "shared") and len(parts) >= 3:
        return SEP.join(parts[:2 if parts[0] == "shared" else 3])
    return parts[0]


def changed_modules(a: str, b: str) -> tuple[str, str]:
    """The part of two parameter names that differs, with their common trailing keys cut:
    ('sublayers.2.norm.weight', 'sublayers.3.norm.weight') -> ('sublayers.2', 'sublayers.3')."""
    pa, pb = a.split(SEP), b.split(SEP)
    while len(pa) > 1 and len(pb) > 1 and pa[-1] == pb[-1]:
        pa, pb = pa[:-1], pb[:-1]
    return SEP.join(pa), SEP.join(pb)
