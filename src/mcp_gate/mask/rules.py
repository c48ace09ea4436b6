"""`[[mask]]` rules compiled once (DESIGN §4, §7): which strategy an output column gets, and
which value detectors run, for a given principal.

Column patterns are case-insensitive `schema.table.column` globs (`policy.globs`; `*` also
crosses dots). A pattern is matched against each base column an output position derives from,
both as written and as a suffix: `users.email` matches `<any schema>.users.email` and `email`
matches a column `email` of any table (a pattern is also tried as `*.` + pattern). Matching
errs on the side of masking: a three-part pattern can only gain matches from this.

A position derived from several base columns is masked when ANY of them matches. When several
rules apply, the strictest strategy wins (`strategies.STRATEGY_ORDER`: null > redact > hash >
partial), whatever the rules' order. A rule does not apply to a principal who is in one of its
`except_groups` (exact, case-sensitive group names: an exemption is a grant, so no globbing);
an exemption from one rule does not lift another rule that also matches.

`partial` and `hash` apply only to an output position that is a plain copy of a column
(`OutputColumn.direct`); on a computed one (`reverse(email)`, `substr(card_number, 1, 13)`,
`coalesce(ssn, 'a guess')`) they become `redact` (`output_strategy`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from mcp_gate.calls import Principal
from mcp_gate.inspect.lineage import OutputColumn
from mcp_gate.policy.globs import compile_globs
from mcp_gate.policy.model import DETECTORS, MaskRule

from .strategies import strictest, strictness

_CACHE_LIMIT = 4096
_NEEDS_A_COPY = frozenset({"partial", "hash"})


@dataclass(frozen=True, slots=True)
class ColumnRule:
    """One `[[mask]]` with `columns`, compiled."""

    index: int  # position of the rule in policies.toml's [[mask]] list
    regex: re.Pattern[str]
    patterns: tuple[str, ...]
    strategy: str
    except_groups: frozenset[str]

    def matches(self, source: str) -> bool:
        return self.regex.match(source) is not None

    def exempts(self, principal: Principal) -> bool:
        return not self.except_groups.isdisjoint(principal.groups)


@dataclass(frozen=True, slots=True)
class MaskReason:
    """Why a position is (or would have been) masked: rule `index` matched `sources`."""

    index: int
    patterns: tuple[str, ...]
    sources: tuple[str, ...]
    strategy: str
    exempt: bool  # the principal is in the rule's except_groups


def _column_regex(patterns: Sequence[str]) -> re.Pattern[str]:
    suffixed = [p if p.startswith("*") else f"*.{p}" for p in patterns]
    return compile_globs(list(dict.fromkeys([*patterns, *suffixed])))


class MaskPlan:
    """The `[[mask]]` list of a policy, compiled once."""

    def __init__(self, rules: Iterable[MaskRule] = ()) -> None:
        rules = list(rules)
        self.rules: tuple[MaskRule, ...] = tuple(rules)
        self.column_rules: tuple[ColumnRule, ...] = tuple(
            ColumnRule(
                i,
                _column_regex(r.columns),
                tuple(r.columns),
                r.strategy,
                frozenset(r.except_groups),
            )
            for i, r in enumerate(rules)
            if r.columns
        )
        self.detect_rules: tuple[tuple[tuple[str, ...], str, frozenset[str]], ...] = tuple(
            (tuple(r.detect), r.strategy, frozenset(r.except_groups)) for r in rules if r.detect
        )
        self._matching: dict[frozenset[str], tuple[ColumnRule, ...]] = {}

    def __bool__(self) -> bool:
        return bool(self.rules)

    def _rules_matching(self, sources: frozenset[str]) -> tuple[ColumnRule, ...]:
        if not isinstance(sources, frozenset):
            sources = frozenset(sources)
        found = self._matching.get(sources)
        if found is None:
            found = tuple(
                rule for rule in self.column_rules if any(rule.matches(s) for s in sources)
            )
            if len(self._matching) >= _CACHE_LIMIT:
                self._matching.clear()
            self._matching[sources] = found
        return found

    def column_strategy(self, sources: frozenset[str], principal: Principal) -> str | None:
        """The strategy for an output position derived from base columns `sources`
        (`schema.table.column`), or None when it is clean for this principal."""
        return strictest(
            rule.strategy for rule in self._rules_matching(sources) if not rule.exempts(principal)
        )

    def column_strategies(
        self, lineage: Sequence[frozenset[str]], principal: Principal
    ) -> list[str | None]:
        """`column_strategy` for each output position."""
        return [self.column_strategy(sources, principal) for sources in lineage]

    def output_strategy(self, output: OutputColumn, principal: Principal) -> str | None:
        """The strategy that applies to one traced output position: `column_strategy` of its
        sources, with `partial` and `hash` turned into `redact` unless the position is a
        plain copy of a column (`OutputColumn.direct`). A hint of a computed value is a hint
        of something else (`reverse(email)` shows the local part), and the token of a
        computed value can be the token of a value the agent chose."""
        strategy = self.column_strategy(output.sources, principal)
        if strategy in _NEEDS_A_COPY and not output.direct:
            return "redact"
        return strategy

    def output_strategies(
        self, outputs: Sequence[OutputColumn], principal: Principal
    ) -> list[str | None]:
        """`output_strategy` for each output position of a traced statement."""
        return [self.output_strategy(o, principal) for o in outputs]

    def explain(self, sources: frozenset[str], principal: Principal) -> list[MaskReason]:
        """Every column rule matching `sources`, with the sources it matched (for `policy
        test`)."""
        return [
            MaskReason(
                rule.index,
                rule.patterns,
                tuple(sorted(s for s in sources if rule.matches(s))),
                rule.strategy,
                rule.exempts(principal),
            )
            for rule in self._rules_matching(sources)
        ]

    def masked_columns(self, columns: Iterable[str], principal: Principal) -> tuple[str, ...]:
        """The base columns among `columns` that a rule masks for `principal`, sorted (for
        `sensitive_predicate`)."""
        return tuple(sorted(c for c in columns if self.column_strategy(frozenset({c}), principal)))

    def unmasked_copies(
        self, written: Iterable[tuple[str, frozenset[str]]], principal: Principal
    ) -> list[tuple[str, tuple[str, ...]]]:
        """The DML target columns (`Lineage.written`) that would receive values of masked
        columns without being masked at least as strictly themselves, each with the masked
        sources: `UPDATE customers SET name = reverse(ssn)` then `SELECT name` would read the
        value back unmasked."""
        out: list[tuple[str, tuple[str, ...]]] = []
        for target, sources in written:
            masked = self.masked_columns(sources, principal)
            if not masked:
                continue
            needed = strictest(self.column_strategy(frozenset({m}), principal) for m in masked)
            have = self.column_strategy(frozenset({target}), principal)
            if have is None or (needed is not None and strictness(have) < strictness(needed)):
                out.append((target, masked))
        return out

    def detectors_for(self, principal: Principal) -> list[tuple[str, str]]:
        """(detector, strategy) for each detector a non-exempt rule enables, the strictest
        strategy when several rules enable it, in `DETECTORS` order."""
        chosen: dict[str, str] = {}
        for names, strategy, except_groups in self.detect_rules:
            if not except_groups.isdisjoint(principal.groups):
                continue
            for name in names:
                chosen[name] = strictest((chosen.get(name), strategy)) or strategy
        return [(name, chosen[name]) for name in DETECTORS if name in chosen]
