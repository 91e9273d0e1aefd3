"""``fraudctl``: a thin command line over the project's stages.

Each command imports its stage when it runs: the stages load Ray, PyTorch, XGBoost and Gradio, which
`fraudctl down` and `--help` do not need. This is the one module that imports project code inside functions.
"""

from __future__ import annotations

import json
import logging
from datetime import date
from pathlib import Path
from typing import Annotated, Any

import typer

from cluster.config import get_settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Real-time fraud analytics on Ray.")
rules_app = typer.Typer(no_args_is_help=True, help="The rules engine: measure a rule set on history.")
app.add_typer(rules_app, name="rules")


@app.callback()
def _configure(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


@app.command()
def up(
    no_ui: Annotated[bool, typer.Option("--no-ui", help="Do not start the Gradio dashboard.")] = False,
    no_simulation: Annotated[bool, typer.Option("--no-simulation", help="Do not start simulated traffic.")] = False,
    no_stream: Annotated[bool, typer.Option("--no-stream", help="Do not start Kinesis stream scoring.")] = False,
    no_serve: Annotated[
        bool,
        typer.Option(
            "--no-serve", help="Do not start the Serve app (a cluster's head deploys it with `serve deploy`)."
        ),
    ] = False,
    tps: Annotated[float | None, typer.Option("--tps", help="Simulated transactions per second.")] = None,
    shift: Annotated[str | None, typer.Option("--shift", help=SHIFT_HELP)] = None,
) -> None:
    """Run the whole system locally until Ctrl-C or `fraudctl down`."""
    from fraudctl.up import MainJobOptions, run_main_job

    settings = get_settings()
    run_main_job(
        settings,
        MainJobOptions(
            ui=not no_ui,
            simulation=not no_simulation,
            stream=not no_stream,
            serve=not no_serve,
            tps=tps or settings.target_tps,
            users=settings.simulated_users,
            shift=_world_shift(shift),
        ),
    )


SHIFT_HELP = (
    "Shift the simulated world for drift, e.g. 'amount_factor=3,share=0.5' or "
    "'missing=device_id+lat,country=BR,new_merchants=50'."
)


def _world_shift(text: str | None) -> Any:
    """``--shift`` parsed, a bad key or value named as the option's error."""
    if text is None:
        return None
    from pydantic import ValidationError

    from simulation.world_shift import parse_shift

    try:
        return parse_shift(text)
    except ValidationError as exc:
        raise typer.BadParameter(
            "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()), param_hint="--shift"
        ) from None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--shift") from None


@app.command()
def down() -> None:
    """Stop what `fraudctl up` started."""
    from fraudctl.process import stop_main_job

    typer.echo(stop_main_job(get_settings()))


@app.command()
def simulate(
    out: Annotated[Path, typer.Option("--out", help="Output file (.csv or .parquet).")],
    users: Annotated[int | None, typer.Option("--users", min=1, help="Default: FRAUD_SIMULATED_USERS.")] = None,
    days: Annotated[int | None, typer.Option("--days", min=1, help="Default: FRAUD_SIMULATED_DAYS.")] = None,
    start: Annotated[str | None, typer.Option("--start", help="First simulated day (YYYY-MM-DD).")] = None,
    seed: Annotated[int | None, typer.Option("--seed")] = None,
    fraud_rate: Annotated[float | None, typer.Option("--fraud-rate", min=0.0001, max=0.2)] = None,
    shift: Annotated[str | None, typer.Option("--shift", help=SHIFT_HELP)] = None,
    shift_from: Annotated[
        str | None, typer.Option("--shift-from", help="First shifted day (YYYY-MM-DD); default: every day.")
    ] = None,
) -> None:
    """Write labelled history with canonical columns, plus the user and merchant profiles beside it."""
    from simulation.history import run_simulate

    settings = get_settings()
    summary = run_simulate(
        settings,
        out=out,
        users=users or settings.simulated_users,
        days=days or settings.simulated_days,
        start=date.fromisoformat(start) if start else settings.simulated_start,
        seed=settings.seed if seed is None else seed,
        fraud_rate=settings.fraud_rate if fraud_rate is None else fraud_rate,
        shift=_world_shift(shift),
        shift_from=date.fromisoformat(shift_from) if shift_from else None,
    )
    typer.echo(json.dumps(summary, indent=2, default=str))


@app.command()
def train(
    data: Annotated[Path, typer.Option("--data", exists=True, dir_okay=False, help="Labelled CSV/Parquet.")],
    trials: Annotated[int | None, typer.Option("--trials", min=1, help="Ray Tune trials per model.")] = None,
    distributed: Annotated[bool, typer.Option("--distributed", help="Fit XGBoost with Ray Train.")] = False,
    objective: Annotated[str, typer.Option("--objective", help="Threshold policy: f1 or cost.")] = "f1",
) -> None:
    """Tune, fit and register a new model version; print its metrics."""
    from training.pipeline import TrainOptions, run_train

    summary = run_train(
        get_settings(), TrainOptions(data=data, trials=trials, distributed=distributed, objective=objective)
    )
    typer.echo(json.dumps(summary, indent=2, default=str))


@app.command()
def backtest(
    data: Annotated[Path, typer.Option("--data", exists=True, dir_okay=False)],
    train_start: Annotated[str, typer.Option("--train-start", help="YYYY-MM-DD")],
    out: Annotated[Path, typer.Option("--out", help="Scores CSV: transaction_id,fraud_score.")],
    train_days: Annotated[int, typer.Option("--train-days", min=1)] = 7,
    delay_days: Annotated[int, typer.Option("--delay-days", min=0)] = 7,
    test_days: Annotated[int, typer.Option("--test-days", min=1)] = 7,
) -> None:
    """Train on a window, then score a later window strictly causally."""
    from training.backtest import BacktestWindow, run_backtest

    window = BacktestWindow(
        train_start=date.fromisoformat(train_start), train_days=train_days, delay_days=delay_days, test_days=test_days
    )
    summary = run_backtest(get_settings(), data=data, window=window, out=out)
    typer.echo(json.dumps(summary, indent=2, default=str))


@rules_app.command("test")
def rules_test(
    rules: Annotated[
        Path,
        typer.Option("--rules", exists=True, dir_okay=False, help="Rule set (.json/.yaml), the PUT /api/rules body."),
    ],
    data: Annotated[Path, typer.Option("--data", exists=True, dir_okay=False, help="Labelled CSV/Parquet.")],
    delay_days: Annotated[float, typer.Option("--delay-days", min=0, help="Days until a label is known.")],
    start: Annotated[
        str | None, typer.Option("--start", help="First day measured (YYYY-MM-DD); earlier rows are feature history.")
    ] = None,
    days: Annotated[int | None, typer.Option("--days", min=1, help="Days measured from --start.")] = None,
    lists: Annotated[
        Path | None,
        typer.Option(
            "--lists",
            exists=True,
            dir_okay=False,
            help="Lists the rules read as @name (.json/.yaml): {name: {kind, values}}.",
        ),
    ] = None,
) -> None:
    """Replay labelled history causally through each rule; print per-rule figures as JSON."""
    from training.rule_replay import run_rule_test

    try:
        summary = run_rule_test(
            get_settings(),
            rules=rules,
            data=data,
            delay_days=delay_days,
            start=date.fromisoformat(start) if start else None,
            days=days,
            lists=lists,
        )
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    for skipped in summary["skipped"]:
        typer.echo(f"rule {skipped['id']} skipped: {skipped['error']}", err=True)
    typer.echo(json.dumps(summary, indent=2, default=str))


@app.command()
def evaluate(
    data: Annotated[Path, typer.Option("--data", exists=True, dir_okay=False)],
    train_start: Annotated[str, typer.Option("--train-start", help="YYYY-MM-DD")],
    train_days: Annotated[int, typer.Option("--train-days", min=1)] = 7,
    delay_days: Annotated[int, typer.Option("--delay-days", min=0)] = 7,
    test_days: Annotated[int, typer.Option("--test-days", min=1)] = 7,
    scores: Annotated[
        Path | None,
        typer.Option(
            "--scores", exists=True, dir_okay=False, help="A backtest's scores CSV, judged against the baseline."
        ),
    ] = None,
    novel: Annotated[
        list[str] | None, typer.Option("--novel", help="Scenario to hold out of training (or all).")
    ] = None,
    trials: Annotated[int | None, typer.Option("--trials", min=1, help="Ray Tune trials per model.")] = None,
    anomaly_review_rate: Annotated[
        float | None,
        typer.Option(
            "--anomaly-review-rate",
            min=0.0,
            max=0.5,
            help="The anomaly review lane's share of traffic in the --novel runs (0: without the lane; "
            "default: FRAUD_ANOMALY_REVIEW_RATE).",
        ),
    ] = None,
) -> None:
    """Judge a backtest against the standard baseline (--scores) and/or recall on fraud never trained on (--novel)."""
    from training.backtest import BacktestWindow
    from training.quality import run_evaluate

    window = BacktestWindow(
        train_start=date.fromisoformat(train_start), train_days=train_days, delay_days=delay_days, test_days=test_days
    )
    summary = run_evaluate(
        get_settings(),
        data=data,
        window=window,
        scores=scores,
        novel=novel,
        trials=trials,
        anomaly_review_rate=anomaly_review_rate,
    )
    typer.echo(json.dumps(summary, indent=2, default=str))


@app.command()
def promote(version: Annotated[str, typer.Argument(help="Model version to make the champion.")]) -> None:
    """Make VERSION the champion (recorded in the rollout state); a running Serve app switches within its refresh
    interval (or at once)."""
    from serve.rollout import run_promote

    typer.echo(json.dumps(run_promote(get_settings(), version), indent=2))


@app.command()
def rollout(
    version: Annotated[
        str | None, typer.Argument(metavar="VERSION", help="Model version (or 'latest') to serve beside the champion.")
    ] = None,
    share: Annotated[
        float | None,
        typer.Option(
            "--share",
            min=0.0,
            max=1.0,
            help="Share of traffic it answers, by transaction_id hash (0: shadow, scored and logged only).",
        ),
    ] = None,
    status: Annotated[bool, typer.Option("--status", help="Print the rollout state as JSON.")] = False,
) -> None:
    """Serve a share of traffic from VERSION, with guardrails that roll it back by themselves."""
    from serve.rollout import rollout_status, run_rollout
    from training.registry import ModelNotFound

    settings = get_settings()
    if status:
        typer.echo(json.dumps(rollout_status(settings), indent=2))
        return
    if version is None or share is None:
        raise typer.BadParameter("give VERSION and --share F, or --status", param_hint="VERSION")
    try:
        typer.echo(json.dumps(run_rollout(settings, version, share), indent=2))
    except ModelNotFound as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command()
def retrain(
    since: Annotated[str | None, typer.Option("--since", help="Oldest transaction used (YYYY-MM-DD).")] = None,
    until: Annotated[str | None, typer.Option("--until", help="Last day of transactions used (YYYY-MM-DD).")] = None,
    trials: Annotated[
        int | None,
        typer.Option("--trials", min=1, help="Ray Tune trials per model (default: fraudctl train's budget)."),
    ] = None,
    objective: Annotated[str, typer.Option("--objective", help="Threshold policy: f1 or cost.")] = "f1",
) -> None:
    """Train on the kept transactions plus feedback labels, register a challenger and start it in shadow."""
    from serve.retrain import run_retrain

    try:
        summary = run_retrain(
            get_settings(),
            since=date.fromisoformat(since) if since else None,
            until=date.fromisoformat(until) if until else None,
            trials=trials,
            objective=objective,
        )
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    history = summary["history"]
    typer.echo(
        f"challenger {summary['version']} in shadow: {history['rows']} rows ({history['frauds']} frauds), "
        f"test AP {summary['metrics'].get('average_precision')}",
        err=True,
    )
    typer.echo(json.dumps(summary, indent=2, default=str))


@app.command()
def compare() -> None:
    """Champion vs the rollout's challenger on labelled feedback: precision, recall and McNemar's test."""
    from serve.rollout import run_compare

    typer.echo(json.dumps(run_compare(get_settings()), indent=2, default=str))


@app.command()
def bench(
    only: Annotated[list[str] | None, typer.Option("--only", help="Run only these sections.")] = None,
    markdown: Annotated[Path | None, typer.Option("--markdown", help="Also write the figures as a table here.")] = None,
) -> None:
    """The project's own benchmark; prints one JSON object of figures."""
    from fraudctl.bench import run_bench
    from fraudctl.bench.report import write_markdown

    figures = run_bench(get_settings(), only=only)
    if markdown:
        write_markdown(figures, markdown)
    typer.echo(json.dumps(figures, indent=2, default=str))


if __name__ == "__main__":
    app()
