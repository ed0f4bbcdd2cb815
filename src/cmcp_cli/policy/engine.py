"""Compiling a bundle into a Cedar PolicySet once, and deciding requests with it.

This is the only module that imports cedarpy: Cedar's semantics enter cMCP here and
leave as `Decision` values and located `Problem`s.

Policy ids are the `@id` annotation when present, otherwise Cedar's positional id
qualified by the file's bundle path (`finance.cedar:policy0`). The whole bundle is
compiled into one PolicySet under those ids, so Cedar's own diagnostics already name them.

An operator's approval must never grant what no permit allows, so a bundle with
`@escalate` forbids is also compiled without them (`CompiledBundle.approvable_set`): a
request those forbids deny is escalated only when that set allows it. It is evaluated on
the escalate path alone; allow and deny cost one evaluation, as without escalations.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import cedarpy

from cmcp_cli.errors import BundleError, CatalogError, Problem
from cmcp_cli.policy import annotations as ann
from cmcp_cli.policy.bundle import BundleFile, BundleSource
from cmcp_cli.policy.decision import Decision, Effect
from cmcp_cli.policy.request import CedarRequest, MessageTarget, ToolResource
from cmcp_cli.policy.source import Statement, line_of_offset, split_statements


@dataclass(frozen=True, slots=True)
class PolicyInfo:
    id: str
    file: str
    line: int | None
    effect: str  # "permit" or "forbid"
    annotations: Mapping[str, str]
    actions: frozenset[str] | None = None  # the action ids its scope names; None: any

    def may_apply_to(self, action: str) -> bool:
        """Whether the policy's action scope admits `action` (its conditions aside)."""
        return self.actions is None or action in self.actions

    @property
    def location(self) -> str:
        return self.file if self.line is None else f"{self.file}:{self.line}"


@dataclass(frozen=True, slots=True)
class _ParsedFile:
    file: BundleFile
    text: str
    statements: list[Statement]
    positional: dict[str, str]  # Cedar's positional id -> cMCP policy id


class CompiledBundle:
    """A bundle parsed and validated once; reuse it for every decision."""

    def __init__(
        self,
        source: BundleSource,
        policies: Mapping[str, PolicyInfo],
        policy_set: cedarpy.PolicySet,
        schema: cedarpy.Schema | None,
        approvable_set: cedarpy.PolicySet,
    ) -> None:
        self.source = source
        self.policies = policies
        self.policy_set = policy_set  # the parsed Cedar handle, reused by every decision
        self.schema = schema
        # The bundle without its @escalate forbids: what an operator's approval can grant.
        self.approvable_set = approvable_set

    @property
    def hash(self) -> str:
        return self.source.hash

    @property
    def has_schema(self) -> bool:
        return self.schema is not None

    def authorizer(self, tools: Iterable[ToolResource]) -> Authorizer:
        return Authorizer(self, tools)


def compile_bundle(source: BundleSource) -> CompiledBundle:
    """Parse every policy file, check annotations and ids, validate against the schema.

    Raises `BundleError` listing every problem, each at its file and line.
    """
    problems: list[Problem] = []
    parsed: list[_ParsedFile] = []
    static_policies: dict[str, Any] = {}
    policies: dict[str, PolicyInfo] = {}
    for bundle_file in source.policy_files:
        result = _parse_file(_where(source, bundle_file.path), bundle_file, problems)
        if result is None:
            continue
        parsed_file, est = result
        parsed.append(parsed_file)
        for positional, body in est.items():
            info = _policy_info(parsed_file, positional, body)
            problems.extend(
                Problem(
                    f"policy {info.id}: {message}", file=_where(source, info.file), line=info.line
                )
                for message in ann.check_annotations(info.effect, dict(info.annotations))
            )
            earlier = policies.get(info.id)
            if earlier is not None:
                problems.append(
                    Problem(
                        f"policy id {info.id!r} is already used at {earlier.location}",
                        file=_where(source, info.file),
                        line=info.line,
                        hint="policy ids name decisions in the audit log; make each @id unique",
                    )
                )
                continue
            parsed_file.positional[positional] = info.id
            policies[info.id] = info
            static_policies[info.id] = body
    schema = _load_schema(source, problems)
    if schema is not None:
        for parsed_file in parsed:
            _validate_against_schema(source, parsed_file, schema, problems)
    if problems:
        raise BundleError(f"policy bundle {source.root} does not compile", problems=problems)
    policy_set = _policy_set(static_policies)
    approvable = {
        pid: body
        for pid, body in static_policies.items()
        if not (policies[pid].effect == "forbid" and ann.ESCALATE in policies[pid].annotations)
    }
    approvable_set = policy_set if approvable == static_policies else _policy_set(approvable)
    return CompiledBundle(source, policies, policy_set, schema, approvable_set)


def _policy_set(static_policies: Mapping[str, Any]) -> cedarpy.PolicySet:
    document = {"staticPolicies": dict(static_policies), "templates": {}, "templateLinks": []}
    return cedarpy.PolicySet.from_json_str(json.dumps(document))


def _where(source: BundleSource, relative: str) -> str:
    return str(source.root / relative)


def _parse_file(
    where: str, bundle_file: BundleFile, problems: list[Problem]
) -> tuple[_ParsedFile, dict[str, Any]] | None:
    try:
        text = bundle_file.data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = line_of_offset(bundle_file.data, exc.start)
        problems.append(Problem(f"not UTF-8 text (byte {exc.start})", file=where, line=line))
        return None
    statements = split_statements(text)
    try:
        document = json.loads(cedarpy.policies_to_json_str(text))
    except ValueError as exc:
        problems.append(_locate_parse_error(where, statements, exc))
        return None
    if document.get("templates"):
        first = next(iter(document["templates"]))
        problems.append(
            Problem(
                "policy templates (?principal / ?resource) authorize nothing until linked; "
                "cMCP bundles take static policies only",
                file=where,
                line=_statement_line(statements, first),
                hint="replace the slot with the concrete principal or resource",
            )
        )
        return None
    est: dict[str, Any] = document.get("staticPolicies", {})
    if len(est) != len(statements):
        statements = []  # the lexer and Cedar disagree: report no lines rather than wrong ones
    return _ParsedFile(bundle_file, text, statements, {}), est


def _locate_parse_error(where: str, statements: list[Statement], exc: ValueError) -> Problem:
    for statement in statements:
        if not statement.terminated:
            return Problem(f"policy does not end with ';' ({exc})", file=where, line=statement.line)
        try:
            cedarpy.policies_to_json_str(statement.text)
        except ValueError as statement_exc:
            return Problem(
                f"policy does not parse: {statement_exc}", file=where, line=statement.line
            )
    return Problem(f"does not parse: {exc}", file=where)


def _statement_line(statements: list[Statement], positional: str) -> int | None:
    index = positional.removeprefix("policy")
    if index.isdigit() and int(index) < len(statements):
        return statements[int(index)].line
    return None


def _policy_info(parsed_file: _ParsedFile, positional: str, body: Mapping[str, Any]) -> PolicyInfo:
    annotations = {str(k): str(v) for k, v in (body.get("annotations") or {}).items()}
    custom_id = annotations.get(ann.ID, "").strip()
    return PolicyInfo(
        id=custom_id or f"{parsed_file.file.path}:{positional}",
        file=parsed_file.file.path,
        line=_statement_line(parsed_file.statements, positional),
        effect=str(body.get("effect")),
        annotations=annotations,
        actions=_scoped_actions(body.get("action")),
    )


def _scoped_actions(scope: Any) -> frozenset[str] | None:
    """The action ids a policy's action scope names (`==` one, `in` a list or group), or
    None when it admits any action (`action`, or `in` an action group, which may hold any)."""
    if not isinstance(scope, Mapping):
        return None
    if scope.get("op") == "==":
        entity = scope.get("entity")
        return frozenset({str(entity.get("id"))}) if isinstance(entity, Mapping) else None
    if scope.get("op") == "in" and isinstance(scope.get("entities"), list):
        return frozenset(str(e.get("id")) for e in scope["entities"] if isinstance(e, Mapping))
    return None


def unpermitted_actions(bundle: CompiledBundle, actions: Iterable[str]) -> list[str]:
    """The actions no permit of the bundle can apply to: Cedar's default deny refuses
    every request for them, whatever else the bundle says."""
    permits = [p for p in bundle.policies.values() if p.effect == "permit"]
    return [a for a in actions if not any(p.may_apply_to(a) for p in permits)]


def _load_schema(source: BundleSource, problems: list[Problem]) -> cedarpy.Schema | None:
    schema_file = source.schema_file
    if schema_file is None:
        return None
    try:
        return cedarpy.Schema.from_str(schema_file.data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        line = line_of_offset(schema_file.data, exc.start)
        problems.append(Problem("not UTF-8 text", file=_where(source, schema_file.path), line=line))
    except ValueError as exc:
        problems.append(
            Problem(
                f"schema does not parse: {exc}",
                file=_where(source, schema_file.path),
                hint="see the schema section of docs/policy.md",
            )
        )
    return None


def _validate_against_schema(
    source: BundleSource, parsed_file: _ParsedFile, schema: cedarpy.Schema, problems: list[Problem]
) -> None:
    result = cedarpy.validate_policies(parsed_file.text, schema)
    for error in result.errors:
        policy_id = parsed_file.positional.get(error.policy_id, error.policy_id)
        message = error.error.replace(f"`{error.policy_id}`", f"`{policy_id}`")
        problems.append(
            Problem(
                f"policy {policy_id} does not conform to the schema: {message}",
                file=_where(source, parsed_file.file.path),
                line=_statement_line(parsed_file.statements, error.policy_id),
            )
        )


class Authorizer:
    """Decides requests for one compiled bundle and one set of tool resources."""

    def __init__(self, bundle: CompiledBundle, tools: Iterable[ToolResource]) -> None:
        self.bundle = bundle
        # Groups need no entities of their own: `resource in Tools::"g"` follows the parent
        # reference, and every extra entity is cloned into each authorization call.
        entities = [tool.entity_json() for tool in tools]
        try:
            self._entities = cedarpy.Entities.from_json_str(
                json.dumps(entities), schema=bundle.schema
            )
        except ValueError as exc:
            raise CatalogError(
                f"the catalog's tools do not fit the bundle schema: {exc}",
                hint="declare the Tool and Tools entity types (with server and data_class "
                "attributes) in schema.cedarschema, or fix the catalog entry",
            ) from exc

    def decide(self, request: CedarRequest, target: MessageTarget | None = None) -> Decision:
        """Decide `request`; `target` is the entity of a message other than a tool call
        (tools are known to the authorizer already). An entity the schema rejects is a
        deny, like any request Cedar cannot evaluate."""
        entities = self._entities
        if target is not None:
            try:
                entities = entities.with_added_json_str(
                    json.dumps([target.entity_json()]), self.bundle.schema
                )
            except ValueError as exc:
                return Decision.refused(
                    f"the {target.type} entity does not fit the bundle schema ({exc}); "
                    "declare it as docs/policy.md shows"
                )
        cedar_request = request.to_json()
        schema = self.bundle.schema
        result = cedarpy.is_authorized(
            cedar_request, self.bundle.policy_set, entities, schema=schema
        )
        decision = self._decision(result)
        if decision.effect is not Effect.ESCALATE:
            return decision
        # Only @escalate forbids deny it. An approval may grant only what the bundle allows
        # without them: decide the same request again without them.
        granted = cedarpy.is_authorized(
            cedar_request, self.bundle.approvable_set, entities, schema=schema
        )
        return self._escalation(decision, self._decision(granted))

    def _escalation(self, held: Decision, granted: Decision) -> Decision:
        """`held`: denied by @escalate forbids alone; `granted`: the same request decided
        without them. An escalation when `granted` forwards: it names the forbids that hold
        it and the permits it runs under once approved, and carries their redaction.
        Otherwise a deny: no approval can grant what no permit allows."""
        forbids = ", ".join(held.policy_ids)
        policy_ids = tuple(sorted({*held.policy_ids, *granted.policy_ids}))
        annotations = {**held.annotations, **granted.annotations}
        if not granted.forwards:
            return Decision(
                Effect.DENY,
                policy_ids,
                (
                    f"escalated by {forbids}, but an operator's approval cannot allow it: "
                    f"{'; '.join(granted.reasons)}",
                ),
                granted.errors,
                annotations=annotations,
            )
        permits = ", ".join(granted.policy_ids)
        redacted = " with redaction" if granted.effect is Effect.REDACT else ""
        return Decision(
            Effect.ESCALATE,
            policy_ids,
            (
                f"held for operator approval by {forbids}; once approved it runs as "
                f"permitted{redacted} by {permits}",
            ),
            redaction=granted.redaction,
            escalation_reasons=held.escalation_reasons,
            annotations=annotations,
        )

    def _decision(self, result: cedarpy.AuthzResult) -> Decision:
        """One evaluation's answer as a decision; its `escalate` is only a candidate until
        `_escalation` has found the permits an approval would run the call under."""
        diagnostics = result.diagnostics
        determining = tuple(sorted(diagnostics.reasons))
        errors = tuple(diagnostics.errors)
        annotations = {pid: self.bundle.policies[pid].annotations for pid in determining}
        if result.decision is cedarpy.Decision.NoDecision:
            return Decision(
                Effect.DENY, (), ("request rejected before evaluation; failing closed",), errors
            )
        if errors:
            return Decision(
                Effect.DENY,
                determining,
                ("a policy failed to evaluate; an allow with errors is a deny",),
                errors,
                annotations=annotations,
            )
        if result.decision is cedarpy.Decision.Allow:
            redaction = ann.EMPTY_REDACTION
            for pid in determining:
                value = annotations[pid].get(ann.REDACT)
                if value is not None:
                    redaction = redaction.merged(ann.parse_redaction(value))
            if redaction is not ann.EMPTY_REDACTION:
                return Decision(
                    Effect.REDACT,
                    determining,
                    (f"permitted with redaction by {', '.join(determining)}",),
                    redaction=redaction,
                    annotations=annotations,
                )
            return Decision(
                Effect.ALLOW,
                determining,
                (f"permitted by {', '.join(determining)}",),
                annotations=annotations,
            )
        if not determining:
            return Decision(Effect.DENY, (), ("no permit policy applies (default deny)",))
        escalations = tuple(annotations[pid].get(ann.ESCALATE, "") for pid in determining)
        if all(escalations):
            return Decision(
                Effect.ESCALATE,
                determining,
                (f"held for operator approval by {', '.join(determining)}",),
                escalation_reasons=escalations,
                annotations=annotations,
            )
        return Decision(
            Effect.DENY,
            determining,
            (f"forbidden by {', '.join(determining)}",),
            annotations=annotations,
        )
