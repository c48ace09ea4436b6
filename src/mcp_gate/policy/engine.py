"""The policy engine: (principal, call, inspection) → Decision.

Semantics, chosen so that doubt always falls on the strict side:

- Every rule whose `match` holds and whose `unless` does not hold applies. The strictest
  applicable decision wins (deny > review > allow); when none applies, `default` does.
- Keys in one `match` are AND-ed; the patterns of one key are any-of.
- Keys about things a call can have several of (`sql_kind` over statements, `tables`,
  `columns`, `aws_action`, `aws_access`, `aws_resource`) are quantified by the rule's effect.
  A rule that *grants* (allow) matches only when **every** such item matches, so
  `allow tables = ["public.orders"]` does not grant a join with `public.users`. A rule that
  *restricts* (review, deny) matches when **any** item matches. `unless` takes the opposite
  quantifier: an exemption from a restriction must cover every item. A key whose items the
  call does not have (no SQL, no tables) never matches.
- `groups` and `sql_risk` are always any-of: membership of one group, presence of one flag.
- `tables` patterns without a dot match the name in any schema (`users` ≡ `*.users`).
- `estimated_rows` holds only when an estimate is known, and only calls with SQL have one.
  For those, the Decision lists the conditions that could not be evaluated, says whether an
  estimate could change it (`estimate_wanted`: the gateway then asks the planner) and which
  restricting rules only the missing estimate kept from applying (`blocked_by_estimate`: the
  gateway denies those calls rather than let them through on a rule it could not evaluate).
  A read whose text bounds its rows (`SqlInspection.row_bound`, a constant LIMIT) decides
  without an estimate the conditions no count up to that bound can meet (`gt`/`gte` at or
  above it): those are false, not unknown, and need no planner.

Rules are compiled once (globs → one regex per key) so a decision costs microseconds.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields, replace
from operator import attrgetter
from typing import Any

from mcp_gate.calls import Principal, ToolCall
from mcp_gate.inspect.model import Inspection
from mcp_gate.policy.globs import compile_globs
from mcp_gate.policy.model import Match, PolicyFile, RowBound, Rule, Verdict

_STRICTNESS: dict[str, int] = {"allow": 0, "review": 1, "deny": 2}


@dataclass(slots=True)  # not frozen: built on every decision, and frozen init is slower
class Facts:
    """A call reduced to the values rules look at, computed once per decision."""

    subject: str
    groups: frozenset[str]
    tool: str
    upstream: str
    connection: str | None
    arguments: dict[str, Any]
    sql_kinds: frozenset[str]
    risks: frozenset[str]
    tables: frozenset[str]
    columns: frozenset[str]
    columns_resolved: bool
    estimated_rows: int | None
    #: The planner's estimate cannot exceed this (a read's static bound), when it is unknown.
    rows_at_most: int | None
    aws_actions: frozenset[str]
    aws_access: frozenset[str]
    aws_resources: frozenset[str]

    @classmethod
    def of(cls, principal: Principal, call: ToolCall, inspection: Inspection) -> Facts:
        """Reduce a call to its facts."""
        sql = inspection.sql
        aws = inspection.aws
        if inspection.columns is not None:
            columns, resolved = inspection.columns, True
        else:
            columns, resolved = (sql.columns if sql else frozenset()), False
        return cls(
            subject=principal.subject,
            groups=principal.groups,
            tool=call.tool,
            upstream=call.upstream,
            connection=call.connection,
            arguments=call.arguments,
            # Each statement's kind and the overall kind: a batch of selects is overall
            # `other`, so a rule granting selects does not grant the batch.
            # SqlKind and Risk are StrEnums: members hash and compare as their strings.
            sql_kinds=frozenset((*sql.kinds, sql.kind)) if sql else frozenset(),
            risks=inspection.risks,
            tables=sql.relations if sql else frozenset(),
            columns=columns,
            columns_resolved=resolved,
            estimated_rows=inspection.estimated_rows,
            rows_at_most=sql.row_bound if sql and inspection.estimated_rows is None else None,
            aws_actions=aws.actions if aws else frozenset(),
            aws_access=aws.access if aws else frozenset(),
            aws_resources=aws.resources if aws else frozenset(),
        )


Test = Callable[[Facts], bool]


@dataclass(frozen=True, slots=True)
class Condition:
    """One compiled key of a `match` or `unless` table."""

    key: str
    test: Test
    describe: Callable[[Facts], str]
    field: str | None
    expr: str
    bound: object
    #: `refutes(k)`: no row count from 0 to k satisfies this condition (rows conditions).
    refutes: Callable[[int], bool] | None = None


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """A rule ready to evaluate: conditions compiled, quantifiers fixed by its decision."""

    name: str
    decision: Verdict
    match: tuple[Condition, ...]
    unless: tuple[Condition, ...] | None
    approvers: tuple[str, ...] | None
    quorum: int | None
    needs_estimate: bool
    unless_needs_estimate: bool


@dataclass(frozen=True, slots=True)
class RuleHit:
    """A rule whose `match` held: why, and whether `unless` exempted the call."""

    rule: str
    decision: Verdict
    why: tuple[str, ...]
    exempted_by: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Decision:
    """The verdict on one call, with everything a person needs to see why."""

    decision: Verdict
    deciding: tuple[str, ...]
    matched: tuple[RuleHit, ...]
    exempted: tuple[RuleHit, ...]
    default_used: bool
    risks: tuple[str, ...]
    approvers: tuple[str, ...]
    quorum: int
    unknown: tuple[str, ...]
    policy_version: str
    #: (name, decision) of each rule that only the missing estimate kept from matching.
    unknown_rules: tuple[tuple[str, Verdict], ...] = ()
    #: An estimate of the rows could change this decision (a rule's match or unless needs it).
    estimate_wanted: bool = False

    @property
    def blocked_by_estimate(self) -> tuple[str, ...]:
        """Restricting rules, stricter than the verdict, that the missing estimate kept from
        applying: a caller that could not get an estimate must not let the call through."""
        floor = _STRICTNESS[self.decision]
        return tuple(n for n, d in self.unknown_rules if _STRICTNESS[d] > floor)

    @property
    def reasons(self) -> list[str]:
        """Rule names that decided, then the call's risk flags (for `_meta`)."""
        names = list(self.deciding) if self.deciding else ["default"]
        return names + [r for r in self.risks if r not in names]

    def to_meta(self, approval_id: str | None = None) -> dict[str, Any]:
        """The `_meta["io.mcp-gate/decision"]` value of DESIGN §2."""
        meta: dict[str, Any] = {"decision": self.decision, "reasons": self.reasons}
        if approval_id is not None:
            meta["approval_id"] = approval_id
        return meta

    def summary(self) -> str:
        """One sentence: the verdict and the rules behind it."""
        if self.default_used:
            return f"{self.decision}: no rule matched, the policy default is {self.decision}"
        rules = ", ".join(f'"{n}"' for n in self.deciding)
        word = "rule" if len(self.deciding) == 1 else "rules"
        text = f"{self.decision} by {word} {rules}"
        if self.decision == "review":
            text += f" (approvers: {', '.join(self.approvers) or 'none'}, quorum {self.quorum})"
        return text


# -- compiling conditions -------------------------------------------------------------------


def _fmt(values: Iterable[str]) -> str:
    return ", ".join(sorted(values)) or "(none)"


def _make(
    key: str,
    field: str | None,
    expr: str,
    bound: object,
    describe: Callable[[Facts], str],
) -> Condition:
    """A condition from an expression template: `{v}` is the Facts field, `{X}` the bound object.

    The same template serves the condition's own test and the whole-policy matcher that
    `Engine` generates, so both always agree.
    """
    body = expr.format(v="v", X="X")
    prelude = f"v = f.{field}; " if field else ""
    namespace: dict[str, Any] = {"X": bound}
    exec(f"def test(f):\n    {prelude}return {body}", namespace)
    return Condition(key, namespace["test"], describe, field, expr, bound)


def _many(key: str, field: str, regex: re.Pattern[str], every: bool) -> Condition:
    match = regex.match
    getter = attrgetter(field)

    def describe(f: Facts) -> str:
        if every:
            return f"{key}: every one of {_fmt(getter(f))} matches"
        return f"{key}: {_fmt(i for i in getter(f) if match(i))} matches"

    # map() over a bound regex method keeps the loop in C: no Python frame per item.
    expr = "(bool({v}) and all(map({X}, {v})))" if every else "any(map({X}, {v}))"
    return _make(key, field, expr, match, describe)


def _one(key: str, field: str, regex: re.Pattern[str]) -> Condition:
    getter = attrgetter(field)
    return _make(
        key,
        field,
        "({v} is not None and {X}({v}) is not None)",
        regex.match,
        lambda f: f"{key}: {getter(f)!r} matches",
    )


def _set_condition(key: str, field: str, wanted: frozenset[str], every: bool) -> Condition:
    getter = attrgetter(field)

    def describe(f: Facts) -> str:
        if every:
            return f"{key}: {_fmt(getter(f))} all in [{_fmt(wanted)}]"
        return f"{key}: {_fmt(getter(f) & wanted)} in [{_fmt(wanted)}]"

    expr = "(bool({v}) and {v} <= {X})" if every else "(not {X}.isdisjoint({v}))"
    return _make(key, field, expr, wanted, describe)


def _call(key: str, test: Callable[[Facts], bool], describe: Callable[[Facts], str]) -> Condition:
    """A condition too involved for an expression: called with the whole Facts."""
    return _make(key, None, "{X}(f)", test, describe)


def _rows_condition(bound: RowBound) -> Condition:
    gt, gte, lt, lte = bound.gt, bound.gte, bound.lt, bound.lte

    def test(f: Facts) -> bool:
        n = f.estimated_rows
        if n is None:
            return False
        return (
            (gt is None or n > gt)
            and (gte is None or n >= gte)
            and (lt is None or n < lt)
            and (lte is None or n <= lte)
        )

    def refutes(k: int) -> bool:
        # Only the lower limits: any count from 0 to k fails them when k is below them.
        return (gt is not None and k <= gt) or (gte is not None and k < gte)

    bounds = (("gt", gt), ("gte", gte), ("lt", lt), ("lte", lte))
    parts = [f"{op} {v}" for op, v in bounds if v is not None]
    condition = _call(
        "estimated_rows",
        test,
        lambda f: f"estimated_rows: {f.estimated_rows} is {' and '.join(parts)}",
    )
    return replace(condition, refutes=refutes)


def _arguments_condition(wanted: dict[str, str]) -> Condition:
    compiled = {name: compile_globs([glob]) for name, glob in wanted.items()}

    def as_text(value: Any) -> str:
        return value if isinstance(value, str) else json.dumps(value, sort_keys=True)

    def test(f: Facts) -> bool:
        for name, regex in compiled.items():
            if name not in f.arguments or regex.match(as_text(f.arguments[name])) is None:
                return False
        return True

    return _call(
        "arguments",
        test,
        lambda f: "arguments: " + ", ".join(f"{n} matches {wanted[n]!r}" for n in wanted),
    )


def _columns_condition(patterns: list[str], every: bool) -> Condition:
    """Columns, exactly when lineage resolved them, otherwise by column name alone.

    Until lineage has run, column references are as written (`u.email`), so only the last
    part can be compared: a restricting rule then matches on the name alone (stricter), and
    a granting rule never matches (it cannot prove what it would grant).
    """
    exact = compile_globs(patterns)
    by_name = compile_globs([p.rsplit(".", 1)[-1] for p in patterns])
    resolved = _many("columns", "columns", exact, every)

    def test(f: Facts) -> bool:
        if f.columns_resolved:
            return resolved.test(f)
        if every:
            return False
        return any(by_name.match(c.rsplit(".", 1)[-1]) for c in f.columns)

    return _call("columns", test, resolved.describe)


def _estimate_undecided(conds: tuple[Condition, ...], facts: Facts) -> bool:
    """Whether a missing estimate leaves one of `conds` undecided: an `estimated_rows`
    condition that the read's static bound (if any) does not refute."""
    k = facts.rows_at_most
    return any(
        c.key == "estimated_rows" and (k is None or c.refutes is None or not c.refutes(k))
        for c in conds
    )


def _table_regex(patterns: list[str]) -> re.Pattern[str]:
    return compile_globs([p if "." in p else f"*.{p}" for p in patterns])


def compile_match(m: Match, every: bool) -> tuple[Condition, ...]:
    """Compile one `match`/`unless` table; `every` quantifies the many-valued keys."""
    conds: list[Condition] = []
    # Cheap set tests first: most rules fail on their first condition.
    if m.sql_kind is not None:
        conds.append(_set_condition("sql_kind", "sql_kinds", frozenset(m.sql_kind), every))
    if m.sql_risk is not None:
        conds.append(_set_condition("sql_risk", "risks", frozenset(m.sql_risk), False))
    if m.aws_access is not None:
        conds.append(_set_condition("aws_access", "aws_access", frozenset(m.aws_access), every))
    if m.tool is not None:
        conds.append(_one("tool", "tool", compile_globs(m.tool)))
    if m.upstream is not None:
        conds.append(_one("upstream", "upstream", compile_globs(m.upstream)))
    if m.connection is not None:
        conds.append(_one("connection", "connection", compile_globs(m.connection)))
    if m.principal is not None:
        conds.append(_one("principal", "subject", compile_globs(m.principal)))
    if m.groups is not None:
        conds.append(_many("groups", "groups", compile_globs(m.groups), False))
    if m.tables is not None:
        conds.append(_many("tables", "tables", _table_regex(m.tables), every))
    if m.columns is not None:
        conds.append(_columns_condition(m.columns, every))
    if m.aws_action is not None:
        conds.append(_many("aws_action", "aws_actions", compile_globs(m.aws_action), every))
    if m.aws_resource is not None:
        conds.append(_many("aws_resource", "aws_resources", compile_globs(m.aws_resource), every))
    if m.arguments is not None:
        conds.append(_arguments_condition(m.arguments))
    if m.estimated_rows is not None:
        conds.append(_rows_condition(m.estimated_rows))
    return tuple(conds)


def compile_rule(rule: Rule) -> CompiledRule:
    """Compile a rule; grants quantify over every item, restrictions over any."""
    grants = rule.decision == "allow"
    unless_estimate = rule.unless is not None and rule.unless.estimated_rows is not None
    return CompiledRule(
        name=rule.name,
        decision=rule.decision,
        match=compile_match(rule.match, every=grants),
        unless=compile_match(rule.unless, every=not grants) if rule.unless else None,
        approvers=tuple(rule.approvers) if rule.approvers is not None else None,
        quorum=rule.quorum,
        needs_estimate=rule.match.estimated_rows is not None or unless_estimate,
        unless_needs_estimate=unless_estimate,
    )


def _build_matcher(rules: tuple[CompiledRule, ...]) -> Callable[[Facts], list[int]]:
    """Generate one function that returns the indexes of the rules whose `match` holds.

    A decision over 100 rules is then 100 inlined `if`s, without a Python call per rule or
    per condition. Only field names and generated identifiers enter the source; every
    pattern, set and callable is bound as a global, so policy text never becomes code.
    """
    names = [f.name for f in fields(Facts)]
    namespace: dict[str, Any] = {}
    lines = ["def match_all(f):"]
    lines += [f"    _{n} = f.{n}" for n in names]
    lines.append("    hits = []")
    for i, rule in enumerate(rules):
        terms = []
        for j, cond in enumerate(rule.match):
            bound = f"_b{i}_{j}"
            namespace[bound] = cond.bound
            terms.append(cond.expr.format(v=f"_{cond.field}" if cond.field else "", X=bound))
        lines.append(f"    if {' and '.join(terms) or 'True'}:")
        lines.append(f"        hits.append({i})")
    lines.append("    return hits")
    exec("\n".join(lines), namespace)
    return namespace["match_all"]


class Engine:
    """Decides calls against one loaded policy. Immutable; safe to share across tasks."""

    def __init__(self, policy: PolicyFile, version: str) -> None:
        self.policy = policy
        self.version = version
        self.rules = tuple(compile_rule(r) for r in policy.rule)
        self.default: Verdict = policy.default
        self.needs_estimate = any(r.needs_estimate for r in self.rules)
        self._match_all = _build_matcher(self.rules)
        self._estimating = [i for i, r in enumerate(self.rules) if r.needs_estimate]
        self._exemptable = any(r.unless_needs_estimate for r in self.rules)

    def decide(self, principal: Principal, call: ToolCall, inspection: Inspection) -> Decision:
        """Judge one call: the strictest applicable rule wins, else the default."""
        facts = Facts.of(principal, call, inspection)
        hits: list[RuleHit] = []
        exempted: list[RuleHit] = []
        applied: list[CompiledRule] = []
        matched = self._match_all(facts)
        # A rule "not evaluated" is one that only the missing estimate kept from matching.
        # A call without SQL has no rows to estimate: like `tables`, the key cannot hold.
        unknown_rules = (
            [
                self.rules[i]
                for i in self._estimating
                if i not in matched
                and all(c.test(facts) for c in self.rules[i].match if c.key != "estimated_rows")
                and _estimate_undecided(self.rules[i].match, facts)
            ]
            if facts.estimated_rows is None and self._estimating and facts.sql_kinds
            else []
        )
        for index in matched:
            rule = self.rules[index]
            why = tuple(c.describe(facts) for c in rule.match) or ("matches every call",)
            if rule.unless is not None and all(c.test(facts) for c in rule.unless):
                exempt = tuple(c.describe(facts) for c in rule.unless)
                exempted.append(RuleHit(rule.name, rule.decision, why, exempt))
                continue
            hits.append(RuleHit(rule.name, rule.decision, why))
            applied.append(rule)

        settings = self.policy.approval
        if applied:
            verdict = max((r.decision for r in applied), key=_STRICTNESS.__getitem__)
            deciding = [r for r in applied if r.decision == verdict]
        else:
            verdict, deciding = self.default, []
        approvers: tuple[str, ...] = ()
        quorum = settings.quorum
        if verdict == "review":
            groups: list[str] = []
            for r in deciding or [None]:
                for g in r.approvers if r and r.approvers is not None else settings.approvers:
                    if g not in groups:
                        groups.append(g)
            approvers = tuple(groups)
            quorum = max([r.quorum or settings.quorum for r in deciding] or [settings.quorum])
        # Could an estimate change the verdict? An unknown rule stricter than it would apply;
        # with no rule applied, any unknown rule would replace the default; a deciding rule's
        # `unless` might exempt it (the missing estimate kept it applying: the strict side).
        floor = _STRICTNESS[verdict]
        estimate_wanted = bool(unknown_rules or self._exemptable) and (
            any(_STRICTNESS[r.decision] > floor for r in unknown_rules)
            or (not applied and any(r.decision != self.default for r in unknown_rules))
            or (
                facts.estimated_rows is None
                and bool(facts.sql_kinds)
                and any(
                    r.unless_needs_estimate
                    and r.unless is not None
                    and _estimate_undecided(r.unless, facts)
                    for r in deciding
                )
            )
        )
        return Decision(
            decision=verdict,
            deciding=tuple(r.name for r in deciding),
            matched=tuple(hits),
            exempted=tuple(exempted),
            default_used=not applied,
            risks=tuple(sorted(facts.risks)),
            approvers=approvers,
            quorum=quorum,
            unknown=tuple(f'rule "{r.name}": estimated_rows unknown' for r in unknown_rules),
            policy_version=self.version,
            unknown_rules=tuple((r.name, r.decision) for r in unknown_rules),
            estimate_wanted=estimate_wanted,
        )
