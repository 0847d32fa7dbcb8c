"""`archspec diff`: a structural diff of two resolved specs (not of their YAML text), what the
change costs, and what a warm start from A's checkpoint can reuse in B.

    d = diff(a, b, seq_lens=(2048, 32768), ignore=("model.dtype",), max_params_delta="5%")
    d.different, d.exit_code        # 0 same, 1 different, 4 a budget crossed
    print(render(d, "table"))       # or "markdown", "json"; to_json(d) is the JSON-ready dict
    b_state = d.compatibility.warm_start(model_a.state_dict())   # A's reusable tensors, B's names

The pipeline (`compare.diff`), one module per stage:

    options.py         ignore paths and sequence lengths checked (DiffOptionError)
    definitions.py     the symbols each layout uses; renamed symbols detected
    align.py           which sublayer of A is which of B; members of matched sublayers paired
    changes.py         model fields, component definitions and sublayers: old -> new
    costs.py           parameter, FLOP and state deltas, in total and per component type
    checkpoint_map.py  which of A's tensors load into B, under which names
    budgets.py         --max-params-delta / --max-flops-delta
    render.py, as_json.py, text.py   table and markdown; JSON; how values are written
    names.py           how groups of parameter names are shown (the names come from the plan)

Alignment (docs/diff.md, "Alignment rule"): sublayers are compared by identity, not by index.
A sublayer's key is the tuple of (type, symbol) of its members, with A's symbols mapped through
the detected renames (a symbol used only in A whose type, backend and resolved config equal
those of a symbol used only in B). The common prefix and suffix of the two key sequences match
as they are. The differing middle is aligned at minimum cost, an edit distance over sublayers:
equal keys cost 0, the same member types with another symbol 2, other member types 4, a
sublayer added or removed 3. So an inserted sublayer is one 'added' entry and everything after
it matches its shifted self; a swapped type (4) pairs up as 'type changed' rather than a removal
plus an addition (6); a run replaced by one of another length pairs what it can and adds or
removes the rest. On ties, earlier sublayers match and the additions or removals come last.
When the middle holds more than align.MAX_DP_CELLS sublayer pairs, difflib's SequenceMatcher
(autojunk off) aligns it instead: matching blocks of keys, then each differing run again on
member types, equal-length replaced runs paired, the rest added / removed (fast, not minimal).
Members of matched sublayers pair by symbol (through renames), then by type, then by position.
Hyperparameters never affect the alignment; matched members' resolved configs (defaults filled,
overrides applied) are compared key by key.
"""
from __future__ import annotations

from .as_json import SCHEMA_VERSION, to_json
from .budgets import Budget, BudgetCheck
from .changes import ABSENT, ComponentChange, FieldChange, MemberChange, SublayerChange
from .checkpoint_map import COMPAT_KINDS, Compatibility
from .compare import EXIT_BUDGET, EXIT_DIFFERENT, EXIT_SAME, EXIT_TROUBLE, SpecDiff, diff
from .costs import CostDelta, Costs, TypeCost
from .options import MODEL_FIELDS, DiffOptionError, check_ignore
from .render import render

__all__ = ["diff", "render", "to_json", "check_ignore", "SpecDiff", "DiffOptionError",
           "FieldChange", "ComponentChange", "MemberChange", "SublayerChange", "CostDelta",
           "TypeCost", "Costs", "Compatibility", "Budget", "BudgetCheck", "ABSENT", "COMPAT_KINDS",
           "MODEL_FIELDS", "SCHEMA_VERSION", "EXIT_SAME", "EXIT_DIFFERENT", "EXIT_TROUBLE",
           "EXIT_BUDGET"]
