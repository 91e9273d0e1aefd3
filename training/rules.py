"""The rule language and rule sets: the one home of "expression text -> vectorised predicate -> action".

An expression is parsed by Python's ``ast`` module (``mode="eval"``) and compiled node by node against an
allow-list: comparisons (``== != < <= > >=``, ``in`` / ``not in`` against ``@list`` or a literal tuple), ``and`` /
``or`` / ``not``, arithmetic (``+ - * / %``, ``**`` only with a small constant exponent), bounded constants, and
the names a rule may read (transaction fields, ``FEATURE_NAMES``, ``fraud_score``, ``risk_level``). Anything else
(calls, attribute access, subscripts, lambdas, comprehensions, other names) is refused at compile time, so user
text is never executed: the compiled form is a tree of numpy closures. A maintained evaluator (simpleeval,
cel-python) was the other option, but both evaluate one row at a time; a micro-batch here is one numpy pass per
node, and a single request is the same code on a batch of one.

Precedence (documented in docs/API_REFERENCE.md): ``first_matched`` applies the first active rule, in list order,
whose expression holds (AWS Fraud Detector's default); ``all_matched`` applies every matching active rule, and the
action is allow over block over review (Stripe Radar's order: an allow rule is an explicit human exception, such as
a known corporate card, and must override an automated block; a block already stops what a review would look at).
With no active rule matching, the action follows the model: HIGH -> block, MEDIUM -> review, LOW -> allow.
Shadow rules are evaluated and counted but never change an action; disabled rules are not evaluated.
"""

from __future__ import annotations

import ast
import copy
import io
import math
import operator
import tokenize
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from cluster.features import FEATURE_NAMES
from cluster.schema import CANONICAL_COLUMNS, ID_PATTERN
from training.policy import HIGH, LOW, MEDIUM

ALLOW, REVIEW, BLOCK = "allow", "review", "block"
ACTIONS = (ALLOW, REVIEW, BLOCK)
MODEL_ACTIONS = {HIGH: BLOCK, MEDIUM: REVIEW, LOW: ALLOW}
PRECEDENCE = (ALLOW, BLOCK, REVIEW)  # all_matched: the first of these among the matched rules' actions wins
ACTIVE, SHADOW, DISABLED = "active", "shadow", "disabled"
FIRST_MATCHED, ALL_MATCHED = "first_matched", "all_matched"

MAX_EXPRESSION_CHARS = 1_000
MAX_NODES = 200
MAX_DEPTH = 20
MAX_CONSTANT = 1e12
MAX_EXPONENT = 4
MAX_STRING_CHARS = 256
MAX_LITERAL_ITEMS = 1_000
MAX_RULES = 200
MAX_DESCRIPTION_CHARS = 500

NUMBER, TEXT, BOOL = "number", "text", "bool"
SCORE_NAMES = ("fraud_score", "risk_level")  # known only once the model has scored
NUMERIC_FIELDS = ("amount", "lat", "lon")
TEXT_FIELDS = tuple(c for c in CANONICAL_COLUMNS if c not in NUMERIC_FIELDS and c != "timestamp")
NAME_TYPES: dict[str, str] = {
    **{name: NUMBER for name in FEATURE_NAMES},
    **{name: NUMBER for name in NUMERIC_FIELDS},
    **{name: TEXT for name in TEXT_FIELDS},
    "fraud_score": NUMBER,
    "risk_level": TEXT,
}
_LIST_PREFIX = "_list_"  # ``@name`` becomes this name before parsing; no readable name starts with "_"
LIST_KINDS = ("user_id", "merchant_id", "device_id", "country")  # a list holds values of one of these fields


class _UncheckedLists(Mapping[str, Any]):
    """The ``known`` lists with their kinds, and any other name as a list of whichever kind the expression tests it
    as (``None``): for a rule set read back from its store, checked against the lists when it was put (a list this
    process has not read yet is empty until it has)."""

    def __init__(self, known: Mapping[str, str] | None = None):
        self.known = dict(known or {})

    def __getitem__(self, name: str) -> str | None:
        return self.known.get(name)

    def __contains__(self, name: object) -> bool:
        return True

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.known)

    def __len__(self) -> int:
        return len(self.known)


UNCHECKED_LISTS: Mapping[str, Any] = _UncheckedLists()


def lenient_lists(known: Mapping[str, str]) -> Mapping[str, Any]:
    """``known`` for ``compile_expression``, any other list name accepted (see ``_UncheckedLists``)."""
    return _UncheckedLists(known)


Values = Any  # a numpy array over the batch, or a scalar (constants)
Evaluator = Callable[[Mapping[str, Any]], Values]


class ListValues:
    """A list's values sorted once, so a batch tests membership by binary search: ``np.isin`` sorts the whole list
    again on every call, which for a list of 100k values is a large share of a batch's scoring time, and of a single
    request's."""

    def __init__(self, values: Sequence[str] | np.ndarray):
        self.sorted = np.unique(np.asarray(values, dtype=str))

    def __len__(self) -> int:
        return len(self.sorted)

    def contains(self, values: np.ndarray, *, invert: bool = False) -> np.ndarray:
        values = np.asarray(values, dtype=str)
        if not len(self.sorted):
            return np.full(values.shape, invert)
        positions = np.minimum(np.searchsorted(self.sorted, values), len(self.sorted) - 1)
        found = self.sorted[positions] == values
        return ~found if invert else found


class RuleError(ValueError):
    """An expression the language refuses, with the reason; raised before anything is evaluated."""


@dataclass(frozen=True)
class Expression:
    """A compiled expression: ``evaluate(env, rows)`` -> bool array; ``names`` and ``lists`` it reads."""

    text: str
    names: frozenset[str]
    lists: frozenset[str]
    _root: Evaluator

    def evaluate(self, env: Mapping[str, Any], rows: int) -> np.ndarray:
        with np.errstate(all="ignore"):  # x / 0 is inf or nan, and a comparison with nan is False
            return self.mask(env, rows).copy()

    def mask(self, env: Mapping[str, Any], rows: int) -> np.ndarray:
        """``evaluate`` for a caller that has set ``np.errstate`` itself (once for a whole rule set)."""
        return np.broadcast_to(_truth(self._root(env)), (rows,))


SharedParts = dict[str, Evaluator]
_RESULTS = "_results"  # in an env: each shared part's values for this batch (no readable name starts with "_")


def compile_expression(
    text: str, *, lists: Mapping[str, str] | None = None, shared: SharedParts | None = None
) -> Expression:
    """Compile ``text`` or raise ``RuleError``; ``lists`` maps the list names that exist to their kind. Expressions
    compiled with one ``shared`` dict evaluate a sub-expression they have in common (``country != 'US'``) once per
    batch when the env carries a results dict (``CompiledRules.apply``)."""
    if not isinstance(text, str) or not text.strip():
        raise RuleError("an expression must be non-empty text")
    if len(text) > MAX_EXPRESSION_CHARS:
        raise RuleError(f"an expression may have at most {MAX_EXPRESSION_CHARS} characters, this has {len(text)}")
    source = _substitute_lists(text)
    try:
        tree = ast.parse(source, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise RuleError(f"not a valid expression: {getattr(exc, 'msg', None) or exc}") from None
    compiler = _Compiler(lists if isinstance(lists, _UncheckedLists) else dict(lists or {}), shared)
    kind, root = compiler.node(tree.body, 1)
    if kind == TEXT:
        raise RuleError("an expression must be a condition (a comparison), not text")
    return Expression(text=text, names=frozenset(compiler.names), lists=frozenset(compiler.lists), _root=root)


def _substitute_lists(text: str) -> str:
    """``@name`` -> a plain name the compiler resolves to the list (strings are left as they are); brackets,
    which leave no node in the tree, are bounded here."""
    out: list[tuple[int, str]] = []
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, SyntaxError, IndentationError) as exc:
        raise RuleError(f"not a valid expression: {exc.args[0] if exc.args else exc}") from None
    index, nesting = 0, 0
    while index < len(tokens):
        token = tokens[index]
        if token.type == tokenize.OP and token.string in "([{":
            nesting += 1
            if nesting > MAX_DEPTH:
                raise RuleError(f"an expression may nest at most {MAX_DEPTH} levels deep")
        elif token.type == tokenize.OP and token.string in ")]}":
            nesting -= 1
        if token.type == tokenize.NAME and token.string.startswith("_"):
            raise RuleError(f"unknown name {token.string!r}: names starting with '_' are not allowed")
        if token.type == tokenize.OP and token.string == "@":
            following = tokens[index + 1] if index + 1 < len(tokens) else None
            if following is None or following.type != tokenize.NAME:
                raise RuleError("'@' must be followed by a list name, as in `user_id in @blocked_cards`")
            out.append((tokenize.NAME, _LIST_PREFIX + following.string))
            index += 2
            continue
        if token.type in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT):
            if token.type == tokenize.COMMENT:
                raise RuleError("comments are not allowed in an expression")
            index += 1
            continue
        out.append((token.type, token.string))
        index += 1
    return tokenize.untokenize(out).strip()


_REFUSED = {
    ast.Call: "function calls",
    ast.Attribute: "attribute access",
    ast.Subscript: "subscripts",
    ast.Lambda: "lambdas",
    ast.ListComp: "comprehensions",
    ast.SetComp: "comprehensions",
    ast.DictComp: "comprehensions",
    ast.GeneratorExp: "comprehensions",
    ast.NamedExpr: "assignment",
    ast.Starred: "unpacking",
    ast.JoinedStr: "f-strings",
    ast.FormattedValue: "f-strings",
    ast.Await: "await",
    ast.Yield: "yield",
    ast.YieldFrom: "yield",
    ast.Dict: "dict literals",
    ast.Slice: "slices",
    ast.IfExp: "conditional expressions (use and / or)",
}
_ARITHMETIC = {ast.Add: np.add, ast.Sub: np.subtract, ast.Mult: np.multiply, ast.Div: np.true_divide, ast.Mod: np.mod}
_ORDERING = {ast.Lt: np.less, ast.LtE: np.less_equal, ast.Gt: np.greater, ast.GtE: np.greater_equal}
_EQUALITY = {ast.Eq: np.equal, ast.NotEq: np.not_equal}
_TEXT_EQUALITY = {ast.Eq: operator.eq, ast.NotEq: operator.ne}


_SHAREABLE = (ast.Compare, ast.BoolOp, ast.BinOp, ast.UnaryOp)  # names and constants cost less than a lookup


def _once_per_batch(key: str, evaluator: Evaluator) -> Evaluator:
    def evaluate(env: Mapping[str, Any]) -> Values:
        results = env.get(_RESULTS)
        if results is None:
            return evaluator(env)
        if key not in results:
            results[key] = evaluator(env)
        return results[key]

    return evaluate


def _truth(values: Values) -> Any:
    array = np.asarray(values)
    return array if array.dtype == np.bool_ else array != 0


def _numbers(values: Values) -> Any:
    array = np.asarray(values)
    return array.astype(np.float64) if array.dtype == np.bool_ else array


class _Compiler:
    """Walks the tree once: checks each node against the allow-list and the bounds, returns (type, evaluator)."""

    def __init__(self, lists: Mapping[str, str], shared: SharedParts | None = None):
        self.known_lists = lists
        self.shared = shared
        self.names: set[str] = set()
        self.lists: set[str] = set()
        self.count = 0

    def node(self, node: ast.AST, depth: int) -> tuple[str, Evaluator]:
        self.count += 1
        if self.count > MAX_NODES:
            raise RuleError(f"an expression may have at most {MAX_NODES} parts")
        if depth > MAX_DEPTH:
            raise RuleError(f"an expression may nest at most {MAX_DEPTH} levels deep")
        if type(node) in _REFUSED:
            raise RuleError(f"not allowed in a rule: {_REFUSED[type(node)]}")
        handler = getattr(self, f"_{type(node).__name__}", None)
        if handler is None:
            raise RuleError(f"{type(node).__name__} is not allowed in a rule")
        kind, evaluator = handler(node, depth)
        if self.shared is not None and isinstance(node, _SHAREABLE):
            key = ast.dump(node)
            evaluator = self.shared.setdefault(key, _once_per_batch(key, evaluator))
        return kind, evaluator

    def _Constant(self, node: ast.Constant, depth: int) -> tuple[str, Evaluator]:
        value = node.value
        if isinstance(value, bool):
            return BOOL, lambda env: value
        if isinstance(value, int | float):
            if not math.isfinite(value) or abs(value) > MAX_CONSTANT:
                raise RuleError(f"numbers in a rule must be finite and at most {MAX_CONSTANT:g} in size")
            number = float(value)
            return NUMBER, lambda env: number
        if isinstance(value, str):
            if len(value) > MAX_STRING_CHARS:
                raise RuleError(f"text in a rule may have at most {MAX_STRING_CHARS} characters")
            return TEXT, lambda env: value
        raise RuleError(f"constant {value!r} is not allowed (numbers, text, True and False are)")

    def _Name(self, node: ast.Name, depth: int) -> tuple[str, Evaluator]:
        name = node.id
        if name.startswith(_LIST_PREFIX):
            raise RuleError(f"@{name[len(_LIST_PREFIX) :]} is a list: use it as `field in @name`")
        if name in ("True", "False"):
            flag = name == "True"
            return BOOL, lambda env: flag
        if name not in NAME_TYPES:
            raise RuleError(
                f"unknown name {name!r}: a rule reads transaction fields, FEATURE_NAMES, fraud_score and risk_level"
            )
        self.names.add(name)
        return NAME_TYPES[name], lambda env: env[name]

    def _UnaryOp(self, node: ast.UnaryOp, depth: int) -> tuple[str, Evaluator]:
        kind, operand = self.node(node.operand, depth + 1)
        if isinstance(node.op, ast.Not):
            self._not_text(kind, "not")
            return BOOL, lambda env: np.logical_not(_truth(operand(env)))
        if isinstance(node.op, ast.USub | ast.UAdd):
            self._number(kind, "a sign")
            sign = -1.0 if isinstance(node.op, ast.USub) else 1.0
            return NUMBER, lambda env: sign * _numbers(operand(env))
        raise RuleError("bitwise operators are not allowed in a rule")

    def _BoolOp(self, node: ast.BoolOp, depth: int) -> tuple[str, Evaluator]:
        parts = [self.node(value, depth + 1) for value in node.values]
        word = "and" if isinstance(node.op, ast.And) else "or"
        for kind, _ in parts:
            self._not_text(kind, word)
        combine = np.logical_and if isinstance(node.op, ast.And) else np.logical_or
        evaluators = [evaluator for _, evaluator in parts]

        def evaluate(env: Mapping[str, Any]) -> Values:
            result = _truth(evaluators[0](env))
            for evaluator in evaluators[1:]:
                result = combine(result, _truth(evaluator(env)))
            return result

        return BOOL, evaluate

    def _BinOp(self, node: ast.BinOp, depth: int) -> tuple[str, Evaluator]:
        (left_kind, left), (right_kind, right) = self.node(node.left, depth + 1), self.node(node.right, depth + 1)
        symbol = type(node.op).__name__
        self._number(left_kind, symbol)
        self._number(right_kind, symbol)
        if isinstance(node.op, ast.Pow):
            exponent = node.right
            if not (
                isinstance(exponent, ast.Constant)
                and isinstance(exponent.value, int | float)
                and not isinstance(exponent.value, bool)
                and abs(exponent.value) <= MAX_EXPONENT
            ):
                raise RuleError(f"** needs a constant exponent of at most {MAX_EXPONENT}")
            power = float(exponent.value)
            return NUMBER, lambda env: np.power(_numbers(left(env)), power)
        function = _ARITHMETIC.get(type(node.op))
        if function is None:
            raise RuleError(f"operator {symbol} is not allowed in a rule (+ - * / % ** are)")
        return NUMBER, lambda env: function(_numbers(left(env)), _numbers(right(env)))

    def _Compare(self, node: ast.Compare, depth: int) -> tuple[str, Evaluator]:
        left_kind, left = self.node(node.left, depth + 1)
        steps_left = left  # the chain's first operand: the only one a list's kind can be checked against
        steps: list[Evaluator] = []
        for op, comparator in zip(node.ops, node.comparators):
            if isinstance(op, ast.In | ast.NotIn):
                field = node.left.id if isinstance(node.left, ast.Name) and left is steps_left else None
                step = self._membership(left_kind, left, comparator, depth + 1, isinstance(op, ast.NotIn), field=field)
                right_kind, right = left_kind, left  # a chain does not continue past a membership test
            else:
                right_kind, right = self.node(comparator, depth + 1)
                step = self._comparison(op, left_kind, left, right_kind, right)
            steps.append(step)
            left_kind, left = right_kind, right

        def evaluate(env: Mapping[str, Any]) -> Values:
            result = steps[0](env)
            for step in steps[1:]:
                result = np.logical_and(result, step(env))
            return result

        return BOOL, evaluate

    def _comparison(
        self, op: ast.cmpop, left_kind: str, left: Evaluator, right_kind: str, right: Evaluator
    ) -> Evaluator:
        if isinstance(op, ast.Is | ast.IsNot):
            raise RuleError("`is` is not allowed in a rule (use == or !=)")
        texts = (left_kind == TEXT, right_kind == TEXT)
        if any(texts) and not all(texts):
            raise RuleError("a comparison needs text on both sides or numbers on both sides")
        if type(op) in _EQUALITY:
            function = _EQUALITY[type(op)]
            if all(texts):
                text_function = _TEXT_EQUALITY[type(op)]
                return lambda env: text_function(left(env), right(env))
            return lambda env: function(_numbers(left(env)), _numbers(right(env)))
        if all(texts):
            raise RuleError("text can only be compared with ==, !=, in and not in")
        function = _ORDERING[type(op)]
        return lambda env: function(_numbers(left(env)), _numbers(right(env)))

    def _membership(
        self, left_kind: str, left: Evaluator, container: ast.AST, depth: int, negate: bool, field: str | None = None
    ) -> Evaluator:
        self.count += 1
        if isinstance(container, ast.Name) and container.id.startswith(_LIST_PREFIX):
            name = container.id[len(_LIST_PREFIX) :]
            if name not in self.known_lists:
                raise RuleError(f"unknown list @{name}")
            kind = self.known_lists[name]
            if kind is None:  # UNCHECKED_LISTS: any list, of the kind it is tested as
                if field not in LIST_KINDS:
                    raise RuleError(f"@{name}: a list holds {', '.join(LIST_KINDS)} values: test one of those fields")
                kind = field
            if field != kind:
                raise RuleError(f"@{name} is a {kind} list: test it as `{kind} in @{name}`")
            self.lists.add(name)
            key = _LIST_PREFIX + name
            return lambda env: env[key].contains(left(env), invert=negate)
        if not isinstance(container, ast.Tuple | ast.List | ast.Set):
            raise RuleError('`in` needs a list (`@name`) or a literal tuple such as ("US", "CA")')
        if not container.elts or len(container.elts) > MAX_LITERAL_ITEMS:
            raise RuleError(f"a literal tuple needs 1 to {MAX_LITERAL_ITEMS} items")
        values = []
        for element in container.elts:
            kind, evaluator = self.node(element, depth + 1)
            if not isinstance(element, ast.Constant | ast.UnaryOp) or kind == BOOL:
                raise RuleError("a literal tuple may hold only numbers or only text")
            if (kind == TEXT) != (left_kind == TEXT):
                raise RuleError("`in` needs text against text items or numbers against number items")
            values.append(evaluator({}))
        items = np.asarray(values, dtype=str if left_kind == TEXT else np.float64)
        if left_kind == TEXT:
            return lambda env: np.isin(left(env), items, invert=negate)
        return lambda env: np.isin(_numbers(left(env)), items, invert=negate)

    @staticmethod
    def _not_text(kind: str, what: str) -> None:
        if kind == TEXT:
            raise RuleError(f"{what} needs conditions, not text (compare the text first)")

    @staticmethod
    def _number(kind: str, what: str) -> None:
        if kind == TEXT:
            raise RuleError(f"{what} needs numbers, not text")


# -- rule sets ------------------------------------------------------------------------------------------------

RuleId = Annotated[str, Field(pattern=ID_PATTERN, description="1-64 chars of A-Za-z0-9_-.:")]


class Rule(BaseModel):
    """One rule: when ``expression`` holds, ``action`` applies (active), is only counted (shadow), or neither."""

    model_config = ConfigDict(extra="ignore")

    id: RuleId
    expression: str = Field(max_length=MAX_EXPRESSION_CHARS, examples=["amount > 1000 and user_count_1h >= 5"])
    action: Literal[ACTIONS]
    state: Literal[ACTIVE, SHADOW, DISABLED] = ACTIVE
    description: str = Field("", max_length=MAX_DESCRIPTION_CHARS)

    @field_validator("expression")
    @classmethod
    def _compiles(cls, text: str, info: ValidationInfo) -> str:
        compile_expression(text, lists=(info.context or {}).get("lists", UNCHECKED_LISTS))
        return text


class RuleSetBody(BaseModel):
    """What ``PUT /api/rules`` takes and a rules file holds."""

    model_config = ConfigDict(extra="ignore")

    mode: Literal[FIRST_MATCHED, ALL_MATCHED] = FIRST_MATCHED
    rules: list[Rule] = Field(default_factory=list, max_length=MAX_RULES)

    @field_validator("rules")
    @classmethod
    def _unique_ids(cls, rules: list[Rule]) -> list[Rule]:
        seen: dict[str, int] = {}
        for index, rule in enumerate(rules):
            if rule.id in seen:
                raise ValueError(f"rule id {rule.id!r} of rules.{index}.id is already used by rules.{seen[rule.id]}")
            seen[rule.id] = index
        return rules


class RuleSet(RuleSetBody):
    """A stored rule set: its body and the version the store gave it (0: none stored yet)."""

    version: int = Field(0, ge=0)


@dataclass(frozen=True)
class CompiledRule:
    rule: Rule
    expression: Expression

    @cached_property
    def reason(self) -> str:
        return f"Rule {self.rule.id}: {self.rule.description or self.rule.expression}"


@dataclass(frozen=True)
class Outcome:
    """A batch's rule results: the action per row, the active rules that decided it, and per-rule match counts."""

    action: np.ndarray  # object array of ACTIONS
    matched: list[list[CompiledRule]]  # per row, the active rules that matched (in rule order)
    counts: dict[str, dict[str, int]]  # rule id -> {"active"|"shadow": rows matched}


class CompiledRules:
    """A rule set compiled once; ``apply`` evaluates it over a batch of rows."""

    def __init__(
        self,
        rule_set: RuleSet,
        *,
        lists: Mapping[str, str] | None = None,
        list_values: Mapping[str, np.ndarray] | None = None,
    ):
        self.rule_set = rule_set
        self.version, self.mode = rule_set.version, rule_set.mode
        self.list_kinds: Mapping[str, Any] = lists if lists is not None else {}  # kept lenient if it was
        shared: SharedParts = {}
        self.rules = [
            CompiledRule(rule, compile_expression(rule.expression, lists=self.list_kinds, shared=shared))
            for rule in rule_set.rules
            if rule.state != DISABLED
        ]
        self.names = frozenset().union(*(r.expression.names for r in self.rules))
        self.lists = frozenset().union(*(r.expression.lists for r in self.rules))
        self.list_values: Mapping[str, ListValues] = _sorted_lists(list_values or {}, self.lists)

    def with_values(self, list_values: Mapping[str, np.ndarray | ListValues]) -> CompiledRules:
        """The same compiled rules over other current list values (no recompiling when only the items change);
        the lists the rules read are sorted here, once per change, not once per batch."""
        bound = copy.copy(self)
        bound.list_values = _sorted_lists(list_values, self.lists)
        return bound

    def inputs(
        self,
        fields: Mapping[str, Any],
        features: np.ndarray,
        fraud_score: np.ndarray | None = None,
        risk_level: np.ndarray | None = None,
    ) -> dict[str, Any]:
        """``rule_inputs`` for what these rules read, the lists' current values included."""
        return rule_inputs(
            self.names,
            fields,
            features,
            fraud_score,
            risk_level,
            lists={name: self.list_values.get(name, _EMPTY_LIST) for name in self.lists},
        )

    def apply(self, env: Mapping[str, Any], model_levels: np.ndarray) -> Outcome:
        """Actions for the rows ``env`` describes (``rule_inputs``), the model's risk levels as the default. The
        per-rule masks are one (rules x rows) matrix: the deciding rule of every row is found at once, and only
        rows that some active rule matched are visited one by one (to list their rules)."""
        rows = len(model_levels)
        action = model_actions(model_levels)
        matched: list[list[CompiledRule]] = [[] for _ in range(rows)]
        batch = {**env, _RESULTS: {}}
        with np.errstate(all="ignore"):  # x / 0 is inf or nan, and a comparison with nan is False
            masks = (
                np.stack([compiled.expression.mask(batch, rows) for compiled in self.rules])
                if self.rules
                else np.zeros((0, rows), dtype=bool)
            )
        counts = {
            compiled.rule.id: {compiled.rule.state: int(count)}
            for compiled, count in zip(self.rules, masks.sum(axis=1))
        }
        is_active = np.array([compiled.rule.state == ACTIVE for compiled in self.rules], dtype=bool)
        if not is_active.any():
            return Outcome(action=action, matched=matched, counts=counts)
        active = [compiled for compiled, on in zip(self.rules, is_active) if on]
        active_masks = masks[is_active]
        rule_actions = np.array([compiled.rule.action for compiled in active], dtype=object)
        decided = active_masks.any(axis=0)
        rows_decided = np.flatnonzero(decided)
        if self.mode == FIRST_MATCHED:
            first = active_masks.argmax(axis=0)
            action[decided] = rule_actions[first[decided]]
            for row in rows_decided:
                matched[row].append(active[first[row]])
        else:
            undecided = decided.copy()
            for candidate in PRECEDENCE:
                takes = undecided & active_masks[rule_actions == candidate].any(axis=0)
                action[takes] = candidate
                undecided &= ~takes
            for row in rows_decided:
                matched[row].extend(active[index] for index in np.flatnonzero(active_masks[:, row]))
        return Outcome(action=action, matched=matched, counts=counts)


def _sorted_lists(values: Mapping[str, np.ndarray | ListValues], names: frozenset[str]) -> dict[str, ListValues]:
    return {
        name: values[name] if isinstance(values[name], ListValues) else ListValues(values[name])
        for name in names
        if name in values
    }


def model_actions(levels: np.ndarray) -> np.ndarray:
    """The action the model's risk level implies (HIGH -> block, MEDIUM -> review, LOW -> allow)."""
    return np.array([MODEL_ACTIONS[str(level)] for level in levels], dtype=object)


def text_values(values: Sequence[Any] | np.ndarray | pd.Series) -> np.ndarray:
    """A text column as a numpy str array, a missing value (None, NaN) as ""; converted in numpy's loop, not
    Python's."""
    column = np.asarray(values, dtype=object)
    missing = pd.isna(column)
    if missing.any():
        column = np.where(missing, "", column)
    return column.astype(str)


_EMPTY_LIST = ListValues([])


def rule_inputs(
    names: frozenset[str],
    fields: Mapping[str, Any],
    features: np.ndarray,
    fraud_score: np.ndarray | None = None,
    risk_level: np.ndarray | None = None,
    lists: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The arrays the ``names`` a rule set reads: transaction ``fields`` (canonical columns), the (rows x
    ``FEATURE_NAMES``) ``features`` matrix, the model's scores when it has run, and each list's current values
    (``lists``: name -> values) as ``_list_<name>``."""
    env: dict[str, Any] = {
        _LIST_PREFIX + name: values if isinstance(values, ListValues) else ListValues(values)
        for name, values in (lists or {}).items()
    }
    for name in names:
        if name in NUMERIC_FIELDS:  # the field itself, not its float32 copy among the features
            env[name] = np.asarray(fields[name], dtype=np.float64)
        elif name in TEXT_FIELDS:
            env[name] = text_values(fields[name])
        elif name == "fraud_score":
            env[name] = np.asarray(fraud_score, dtype=np.float64)
        elif name == "risk_level":
            env[name] = text_values(risk_level)
        else:
            env[name] = features[:, FEATURE_NAMES.index(name)].astype(np.float64)
    return env
