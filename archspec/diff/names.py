"""How the diff shows groups of parameter names. The names themselves come from the plan
(archspec/plan.py: each node's module path and `param_name`); nothing here builds or parses
their structure, only dotted text: a module's tensors as 'module.*', and the part two names
differ in once their common trailing keys are cut.
"""
from __future__ import annotations

SEP = "."
ALL = "*"


def everything_under(module: str) -> str:
    """Shorthand for all the parameters of a module: 'sublayers.2.*'."""
    return f"{module}{SEP}{ALL}"


def changed_modules(a: str, b: str) -> tuple[str, str]:
    """The part of two parameter names that differs, with their common trailing keys cut:
    ('sublayers.2.norm.weight', 'sublayers.3.norm.weight') -> ('sublayers.2', 'sublayers.3')."""
    pa, pb = a.split(SEP), b.split(SEP)
    while len(pa) > 1 and len(pb) > 1 and pa[-1] == pb[-1]:
        pa, pb = pa[:-1], pb[:-1]
    return SEP.join(pa), SEP.join(pb)
