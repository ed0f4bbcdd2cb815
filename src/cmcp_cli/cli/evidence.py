"""`cmcp verify` and `cmcp replay-audit`."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cmcp_cli.attestation.api import Check, CheckStatus
from cmcp_cli.audit.report import (
    ReplayReport,
    ReplayRequest,
    claim_key_thumbprint,
    log_size,
    replay_audit,
)
from cmcp_cli.audit.status import Status
from cmcp_cli.claim.challenge import challenge_problem
from cmcp_cli.cli import render
from cmcp_cli.cli.options import JsonFlag
from cmcp_cli.errors import ExitCode, UsageError
from cmcp_cli.verify.claim import (
    DEFAULT_MAX_AGE_SECONDS,
    PINNING_MEANING,
    VerifyOptions,
    VerifyReport,
    resolve_trusted_key,
    verify_claim_file,
)
from cmcp_cli.verify.receipt import read_receipt
from cmcp_cli.verify.sequence import verify_sequence

_STATUS_STYLE = {
    CheckStatus.PASS: "green",
    CheckStatus.FAIL: "bold red",
    CheckStatus.SKIP: "yellow",
}


def verify_command(
    claims: Annotated[
        list[Path],
        typer.Argument(
            help="A GatewayClaim or a standalone TRACE record; or several claims of one "
            "session, in sequence order, to check their links too.",
            show_default=False,
        ),
    ],
    policy_hash: Annotated[
        str | None, typer.Option("--policy-hash", help="Pin the bundle hash.")
    ] = None,
    catalog_hash: Annotated[
        str | None, typer.Option("--catalog-hash", help="Pin the catalog hash.")
    ] = None,
    trusted_key: Annotated[
        str | None,
        typer.Option("--trusted-key", help="Pin the signing key: RFC 7638 thumbprint or JWK file."),
    ] = None,
    expected_measurement: Annotated[
        list[str] | None,
        typer.Option(
            "--expected-measurement", help="An accepted runtime measurement (repeatable)."
        ),
    ] = None,
    trust_root: Annotated[
        list[Path] | None,
        typer.Option("--trust-root", help="A pinned vendor root, PEM (repeatable)."),
    ] = None,
    collateral: Annotated[
        list[Path] | None,
        typer.Option(
            "--collateral",
            help="Vendor collateral to appraise the evidence with: Intel PCS TCB info, QE "
            "identity and CRLs as one JSON document, or AMD's CRL (repeatable).",
        ),
    ] = None,
    allow_debug: Annotated[
        bool,
        typer.Option("--allow-debug", help="Accept evidence from a TEE that allows debugging."),
    ] = False,
    platform_policy: Annotated[
        Path | None,
        typer.Option(
            "--platform-policy",
            help="TOML requirements per provider, e.g. [sev-snp] minimum_tcb or [tdx] "
            "accepted_tcb_statuses (see docs/verifying.md).",
        ),
    ] = None,
    audit_log: Annotated[
        Path | None, typer.Option("--audit-log", help="The session's audit store or JSONL export.")
    ] = None,
    at: Annotated[
        str | None, typer.Option("--at", help="Verify as of this time (RFC 3339 or Unix seconds).")
    ] = None,
    max_age: Annotated[
        int, typer.Option("--max-age", help="Maximum claim age in seconds at --at.")
    ] = DEFAULT_MAX_AGE_SECONDS,
    allow_software: Annotated[
        bool, typer.Option("--allow-software", help="Accept a software-mode claim (exit 0, not 3).")
    ] = False,
    expected_nonce: Annotated[
        str | None,
        typer.Option(
            "--expected-nonce",
            metavar="CHALLENGE",
            help="The challenge you gave the gateway when the session opened: the claim's "
            "runtime.nonce must be it.",
        ),
    ] = None,
    receipt: Annotated[
        Path | None,
        typer.Option(
            "--receipt",
            help="The transparency receipt of the claim's record (<claim>.receipt.json): "
            "check that the log anchored exactly this record.",
        ),
    ] = None,
    log_key: Annotated[
        Path | None,
        typer.Option(
            "--log-key",
            help="The transparency log's public key, PEM (Ed25519, P-256 or P-384): proves "
            "the receipt's root is the log's. Without it an anchored claim exits 3.",
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> int:
    """Verify a claim offline, or a session's claims and their links: every check itemised;
    exit 0 verified, 1 failed, 3 not attested."""
    if log_key is not None and receipt is None:
        raise UsageError(
            "--log-key checks a receipt's signature", hint="give the receipt with --receipt FILE"
        )
    if receipt is not None and len(claims) > 1:
        raise UsageError(
            "--receipt proves one record: give one claim with it",
            hint="verify each claim of the sequence with its own receipt",
        )
    options = VerifyOptions(
        policy_hash=policy_hash,
        catalog_hash=catalog_hash,
        trusted_key=resolve_trusted_key(trusted_key) if trusted_key else None,
        expected_measurements=tuple(expected_measurement or ()),
        audit_log=audit_log,
        at=_parse_time(at) if at else None,
        max_age_seconds=max_age,
        allow_software=allow_software,
        allow_debug=allow_debug,
        expected_nonce=_expected_nonce(expected_nonce) if expected_nonce is not None else None,
        receipt=read_receipt(receipt, log_key) if receipt is not None else None,
    )
    roots, extra = tuple(trust_root or ()), tuple(collateral or ())
    if len(claims) > 1:
        sequence = verify_sequence(claims, options, roots, extra, platform_policy)
        if as_json:
            render.emit_json(sequence.to_json())
        else:
            for path, each in sequence.claims:
                _render_verify(path, each)
            _render_checks("the claims as one sequence", "claim-sequence", sequence.checks)
            _render_verdict(sequence.exit_code, sequence.verdict)
        return int(sequence.exit_code)
    (claim,) = claims
    report = verify_claim_file(claim, options, roots, extra, platform_policy)
    if as_json:
        render.emit_json(report.to_json())
    else:
        _render_verify(claim, report)
    return int(report.exit_code)


def _expected_nonce(value: str) -> str:
    """The auditor's challenge, when it is one the gateway could have taken."""
    problem = challenge_problem(value)
    if problem is not None:
        raise UsageError(
            f"--expected-nonce {value!r} is not a challenge: {problem}",
            hint="give the exact value you sent as Cmcp-Challenge (or in _meta)",
        )
    return value


def _parse_time(text: str) -> datetime:
    if text.isdigit():
        return datetime.fromtimestamp(int(text), UTC)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise UsageError(f"--at {text!r} is neither RFC 3339 nor Unix seconds") from None
    if moment.tzinfo is None:
        raise UsageError(f"--at {text!r} has no time zone; add Z or an offset")
    return moment


def _render_verify(claim: Path, report: VerifyReport) -> None:
    _render_checks(str(claim), report.kind, report.checks)
    if report.catalog_pinning is not None:
        style = "yellow" if report.catalog_pinning == "first-contact" else "dim"
        meaning = PINNING_MEANING[report.catalog_pinning]
        render.err.print(
            f"catalog pinning [{style}]{report.catalog_pinning}[/{style}]: {escape(meaning)}"
        )
    _render_verdict(report.exit_code, report.verdict)


def _render_checks(title: str, kind: str, checks: list[Check]) -> None:
    render.err.print(f"[bold]{escape(title)}[/bold] ({kind})")
    table = Table()
    for column in ("check", "result", "reason"):
        table.add_column(column)
    for check in checks:
        style = _STATUS_STYLE[check.status]
        table.add_row(
            escape(check.name), f"[{style}]{check.status.value}[/{style}]", escape(check.reason)
        )
    render.err.print(table)


def _render_verdict(code: ExitCode, verdict: str) -> None:
    style = {ExitCode.OK: "bold green", ExitCode.FAILED: "bold red"}.get(code, "bold yellow")
    render.err.print(f"[{style}]{escape(verdict)}[/{style}]")


def replay_audit_command(
    db: Annotated[Path | None, typer.Option("--db", help="The SQLite audit store.")] = None,
    log: Annotated[Path | None, typer.Option("--log", help="A JSONL export.")] = None,
    session: Annotated[str | None, typer.Option("--session", help="Replay this session.")] = None,
    all_sessions: Annotated[bool, typer.Option("--all", help="Replay every session.")] = False,
    claim: Annotated[
        Path | None, typer.Option("--claim", help="Match the chain with this claim.")
    ] = None,
    bundle: Annotated[
        list[Path] | None,
        typer.Option(
            "--bundle",
            help="Decide every recorded request again; repeat it for sessions under "
            "different bundles (each is decided with the one its log names).",
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> int:
    """Recompute every hash and link, locate discrepancies, match a claim, re-decide calls."""
    if db is not None and log is None:
        source, expect_sqlite = db, True
    elif log is not None and db is None:
        source, expect_sqlite = log, False
    else:
        raise UsageError("give exactly one of --db PATH or --log PATH")
    if session is not None and all_sessions:
        raise UsageError("--session and --all exclude each other")
    request = ReplayRequest(
        log=source,
        expect_sqlite=expect_sqlite,
        session_id=session,
        all_sessions=all_sessions,
        claim=claim,
        bundles=tuple(bundle or ()),
    )
    if as_json or not render.err.is_terminal:
        report = replay_audit(request)
    else:
        with Progress(
            TextColumn("replaying"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=render.err,
            transient=True,
            auto_refresh=False,  # no refresh thread: replay forks workers only without threads
        ) as bar:
            task = bar.add_task("replay", total=log_size(request))

            def advance(entries: int) -> None:
                bar.advance(task, entries)
                bar.refresh()

            report = replay_audit(request, progress=advance)
    if as_json:
        render.emit_json(report.to_json())
    else:
        _render_replay(report)
    return int(ExitCode.OK if report.ok else ExitCode.FAILED)


_SESSION_STYLE = {
    Status.ENDED: "green",
    Status.RECOVERED: "cyan",
    Status.OPEN: "green",
    Status.INTERRUPTED: "bold yellow",
    Status.TRUNCATED: "bold red",
}


def _render_replay(report: ReplayReport) -> None:
    table = Table()
    for column in ("session", "status", "chain", "entries", "calls", "re-checked", "detail"):
        table.add_column(column)
    for replay in report.sessions:
        state = replay.state
        status = report.statuses[replay.session_id]
        style = _SESSION_STYLE[status.status]
        table.add_row(
            escape(replay.session_id),
            f"[{style}]{status.status.value}[/{style}]",
            "[green]clean[/green]" if not replay.problems else "[bold red]discrepancies[/bold red]",
            str(state.length),
            str(state.calls.total),
            str(replay.decisions_checked),
            escape(status.describe()),
        )
    render.err.print(table)
    for replay in report.sessions:
        state = replay.state
        status = report.statuses[replay.session_id]
        verdict = (
            "[green]clean[/green]" if not replay.problems else "[bold red]discrepancies[/bold red]"
        )
        render.line(
            f"session [bold]{escape(replay.session_id)}[/bold]: {verdict}; {state.length} entries, "
            f"tip {state.tip}, {state.calls.total} calls, "
            f"{replay.decisions_checked} decisions re-checked; {status.status.value}: "
            f"{escape(status.describe())}"
        )
        thumbprint = claim_key_thumbprint(replay)
        if thumbprint is not None:
            render.line(
                f"  claim-signing key {escape(thumbprint)} "
                f"(pin it: cmcp verify --trusted-key {escape(thumbprint)})"
            )
        else:
            render.err.print("  [red]the log records no claim-signing key[/red]")
        by_kind = state.calls.by_kind
        if by_kind:
            kinds = ", ".join(
                f"{escape(name)} {counts.total}" for name, counts in sorted(by_kind.items())
            )
            render.err.print(f"  messages by kind: {kinds}")
        for problem in replay.problems:
            where = f"seq {problem.seq}" if problem.seq is not None else "claim"
            render.err.print(
                f"  [red]{problem.kind.value}[/red] at {where}: {escape(problem.message)}"
            )
        if replay.first_bad_seq is not None:
            render.err.print(f"  first bad sequence number: [bold]{replay.first_bad_seq}[/bold]")
    if report.claim_session:
        render.err.print(f"claim matched against session {escape(report.claim_session)}")
    for bundle_hash in report.bundle_hashes:
        sessions = sum(1 for s in report.sessions if s.bundle_hash == bundle_hash)
        render.err.print(
            f"decisions re-evaluated with bundle {bundle_hash} ({sessions} session(s))"
        )
