"""The ``zoo`` command line: list, compare, fit, report (DESIGN.md section 3).

Everything that can be checked without torch is checked before torch is imported (the model,
its options and data set name, the preset, the seed, method names, the out-dir), so that
``zoo --help``, ``zoo list`` and argument errors answer at once.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from comparisons.inputs import check_seed, check_writable, parse_ks
from zoo import MODELS, ModelSpec, ZooInputError, get_model

#: The names of ``comparisons.runners.PRESETS``, which imports torch; a test keeps them equal.
PRESET_NAMES = ("smoke", "full")

MODEL_FLAGS = {
    # flag destination -> make_posterior keyword
    "target": "target",
    "features": "features",
    "degree": "degree",
    "prior": "prior",
    "center": "center",
    "intercept": "intercept",
    "prior_intercept_scale": "intercept_scale",
    "prior_coef_scale": "coef_scale",
    "sigma_prior": "sigma_prior",
    "prior_sigma_scale": "sigma_scale",
    "sigma_known": "sigma_known",
    "prior_sigma_shape": "sigma_shape",
    "test_fraction": "test_fraction",
    "num_components": "num_components",
    "latent_dim": "latent_dim",
    "hidden": "hidden",
    "encoder_hidden": "encoder_hidden",
    "likelihood": "likelihood",
    "scale": "scale",
    "v1_units": "v1_units",
}


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line and exits 2."""

    def error(self, message: str) -> None:  # noqa: D401
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _seed(text: str) -> int:
    """``--seed``: a whole number in [0, 2**31) (argparse reports the error in one line)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"the seed must be a whole number, as 0 or 12; got '{text}'"
        ) from None
    try:
        return check_seed(value)
    except ZooInputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _widths(text: str) -> tuple[int, ...]:
    """``--hidden``: comma-separated positive widths, or ``linear`` (no hidden layer)."""
    if text.strip().lower() == "linear":
        return ()
    try:
        widths = tuple(int(w) for w in text.split(",") if w.strip())
    except ValueError:
        widths = ()
    if not widths or min(widths) < 1:
        raise argparse.ArgumentTypeError(
            f"layer widths are positive whole numbers separated by commas, as 256,256 (or"
            f" linear); got '{text}'"
        )
    return widths


def _add_run_options(p: argparse.ArgumentParser) -> None:
    """The options shared by ``zoo compare`` and ``zoo fit`` (in the order --help lists them)."""
    _add_data_options(p)
    _add_run_settings(p)
    _add_model_options(p)
    _add_progress(p, "progress bars of NUTS and the fits")
    _add_regression_options(p.add_argument_group("linear_regression"))


def _add_progress(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"{what} (default: on when stderr is a terminal)",
    )


def _add_data_options(p: argparse.ArgumentParser) -> None:
    """The model and its data: a built-in data set or a CSV, its response and predictors."""
    p.add_argument("model", help="model name (see `zoo list`)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--dataset", help="built-in data set (see `zoo list`)")
    src.add_argument("--data", type=Path, help="your CSV file (header row, numeric columns)")
    p.add_argument("--target", help="response column (regression)")
    p.add_argument(
        "--features",
        type=lambda s: [c.strip() for c in s.split(",") if c.strip()],
        help="comma-separated predictor columns (default: all others)",
    )


def _add_run_settings(p: argparse.ArgumentParser) -> None:
    """How the methods run: reference, preset, seed, output folder and device."""
    p.add_argument(
        "--reference",
        help="method the others are judged against (default: exact where it exists, else"
        " nuts when it runs, else the model's first closed form, as ml)",
    )
    p.add_argument(
        "--preset",
        help="smoke (quick look) or full (the default; two_level_vae's default is smoke, which"
        " trains in minutes on 2 cores, and its full preset is for a GPU)",
    )
    p.add_argument(
        "--seed", type=_seed, default=0, help="seed of every random choice, 0 to 2**31 - 1 (0)"
    )
    p.add_argument(
        "--out-dir", type=Path, help="output folder (default reports/<model>-<dataset>/)"
    )
    p.add_argument(
        "--device", default="cpu", choices=["cpu", "cuda"], help="device for the neural models"
    )
    p.add_argument(
        "--chains-in-parallel",
        action=argparse.BooleanOptionalAction,
        help="nuts_pyro's chains in processes of their own, with the same draws as one"
        " after another (default: where the machine has more than one core, on Linux);"
        " nuts advances all its chains together in one process",
    )
    p.add_argument(
        "--checkpoint-dir",
        type=Path,
        help="folder where each SVI fit keeps a checkpoint (<method>.pt): the same command run"
        " again resumes an interrupted fit and reads finished ones back",
    )


def _add_model_options(p: argparse.ArgumentParser) -> None:
    """Options of the mixture, latent-variable and amortized models, and the held-out share."""
    p.add_argument(
        "--num-components",
        help="number of mixture components (gmm); several, as 1,2,3 or 1-5, compare them"
        " (ELPD, ELBO, BIC)",
    )
    p.add_argument(
        "--latent-dim", type=int, help="latent dimension (ppca, vae; two_level_vae: V2's units)"
    )
    p.add_argument(
        "--test-fraction",
        type=float,
        help="share of rows held out for the held-out log predictive density (default 0:"
        " every row is fitted, PSIS-LOO measures prediction; vae: 0.2 of a file's rows)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        help="rows per SVI step (minibatch SVI, for models that allow it: gmm)",
    )
    p.add_argument("--encoder", help="encoder of the amortized guide: linear (default) or mlp")
    vae = p.add_argument_group("vae")
    vae.add_argument(
        "--hidden",
        type=_widths,
        help="hidden layer widths of the decoder, as 256,256 (default); 'linear' for none",
    )
    vae.add_argument(
        "--encoder-hidden",
        type=_widths,
        help="hidden layer widths of the encoders (vae default: the decoder's; two_level_vae: 256)",
    )
    vae.add_argument(
        "--likelihood", help="p(x | z): gaussian (default), bernoulli or continuous_bernoulli"
    )
    vae.add_argument("--scale", help="the Gaussian likelihood's scale: pixel (default) or shared")
    two = p.add_argument_group("two_level_vae")
    two.add_argument("--v1-units", type=int, help="V1 units (default: one per pixel)")
    p.add_argument(
        "--amortized-globals",
        help="guide of the globals beside the amortized encoder: delta (default) or mean_field",
    )


#: The on/off flags of linear regression: flag, destination, action, help.
_REGRESSION_SWITCHES = (
    ("--center", "center", "store_true", "sample the intercept at the predictor means (default)"),
    (
        "--no-center",
        "center",
        "store_false",
        "sample the raw intercept (strongly correlated with the slopes)",
    ),
    ("--no-intercept", "intercept", "store_false", "regression through the origin"),
)


def _add_regression_options(reg: argparse._ArgumentGroup) -> None:
    """linear_regression's basis and priors (the ``linear_regression`` group of --help)."""
    reg.add_argument("--degree", type=int, help="polynomial basis x..x^degree of one feature")
    reg.add_argument(
        "--prior",
        help="weakly_informative (default), conjugate (normal-inverse-gamma, gives the method"
        " exact) or flat (improper uniform intercept and coefficients; needs more rows than"
        " coefficients)",
    )
    for flag, dest, action, text in _REGRESSION_SWITCHES:
        # default None (not given) on every switch: the first one of a destination sets it.
        reg.add_argument(flag, dest=dest, action=action, default=None, help=text)
    _add_prior_scales(reg)


def _add_prior_scales(reg: argparse._ArgumentGroup) -> None:
    """linear_regression's prior scales and noise options: flag, type, metavar, help."""
    options = (
        ("--prior-intercept-scale", float, None, "prior sd of the intercept"),
        (
            "--prior-coef-scale",
            _scales,
            "S[,S...]",
            "prior sd of the coefficients: one for all, or one per feature in --features order"
            " (e.g. 2.5,1,10)",
        ),
        ("--sigma-prior", None, None, "exponential (default), half_normal or half_cauchy"),
        ("--prior-sigma-scale", float, None, "scale of the sigma prior"),
        ("--sigma-known", float, None, "fix the noise sd (Gaussian posterior)"),
        (
            "--prior-sigma-shape",
            float,
            "A0",
            "shape a0 of the conjugate prior sigma^2 ~ InverseGamma(a0, a0 s^2), s the sigma"
            " scale (default 2; with --prior conjugate)",
        ),
    )
    for flag, kind, metavar, text in options:
        reg.add_argument(flag, type=kind, metavar=metavar, help=text)


def _scales(text: str) -> list[float]:
    """A comma-separated list of numbers (argparse type of --prior-coef-scale)."""
    parts = [p.strip() for p in text.split(",")]
    try:
        return [float(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not a number or a comma-separated list of numbers"
        ) from None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="zoo", description="Compare ways of approximating a posterior.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub.add_parser("list", help="models, guides, methods and built-in data sets")
    cmp_ = sub.add_parser("compare", help="run a model under several methods and write a report")
    _add_run_options(cmp_)
    cmp_.add_argument(
        "--methods",
        type=lambda s: [m.strip() for m in s.split(",") if m.strip()],
        help="comma-separated methods (default: all that apply)",
    )
    fit = sub.add_parser("fit", help="run one method and write its files")
    _add_run_options(fit)
    fit.add_argument("--method", required=True, help="nuts, a guide name, or a closed form")
    rep = sub.add_parser("report", help="re-render index.html and figures from a folder")
    rep.add_argument("dir", type=Path)
    _add_calibrate(sub)
    return parser


def _add_calibrate(sub) -> None:
    cal = sub.add_parser(
        "calibrate",
        help="simulation-based calibration: do a method's intervals hold the truth as often"
        " as they say? (many fits, run on Dask)",
    )
    _add_data_options(cal)
    cal.add_argument(
        "--methods",
        type=lambda s: [m.strip() for m in s.split(",") if m.strip()],
        help="comma-separated methods (default: every method a comparison runs by default)",
    )
    cal.add_argument(
        "--replications", type=int, default=100, help="simulated data sets, one fit each (100)"
    )
    cal.add_argument(
        "--preset", default="smoke", help="smoke (the default here: many fits) or full"
    )
    cal.add_argument(
        "--seed",
        type=_seed,
        default=0,
        help="seed of the calibration; each replication's own is drawn from it (0)",
    )
    cal.add_argument(
        "--out-dir", type=Path, help="output folder (default reports/calibrate-<model>-<dataset>/)"
    )
    _add_cluster_options(cal, "replications")
    cal.add_argument("--num-components", type=int, help="number of mixture components (gmm)")
    cal.add_argument("--latent-dim", type=int, help="latent dimension (ppca, vae)")
    cal.add_argument(
        "--hidden",
        type=_widths,
        help="hidden layer widths of the VAE's decoder, as 256,256 (default); 'linear' for none",
    )
    _add_regression_options(cal.add_argument_group("linear_regression"))
    cal.set_defaults(device="cpu")
    sw = sub.add_parser(
        "sweep",
        help="a grid of comparisons (runs x seeds) from a TOML file, run on Dask, with"
        " one summary report across them (see docs/calibration.md)",
    )
    sw.add_argument("file", type=Path, help="the sweep's TOML file")
    sw.add_argument("--out-dir", type=Path, help="output folder (default reports/sweep-<file>/)")
    _add_cluster_options(sw, "comparisons")


def _add_cluster_options(p: argparse.ArgumentParser, tasks: str) -> None:
    """Where a many-fit job's ``tasks`` run (--workers, --scheduler) and its progress bar."""
    p.add_argument(
        "--workers",
        type=int,
        help="worker processes of the local Dask cluster (default: one per core)",
    )
    p.add_argument(
        "--scheduler",
        help=f"address of a running Dask scheduler (tcp://host:8786) to send the {tasks} to"
        " instead of a local cluster",
    )
    _add_progress(p, f"a progress bar as {tasks} finish")


def _check_workers(args: argparse.Namespace) -> None:
    if args.workers is not None and args.workers < 1:
        raise ZooInputError(f"--workers must be at least 1, got {args.workers}")


def _list() -> str:
    from guides import ALIASES, GUIDES

    models, guides = MODELS.values(), GUIDES.values()
    name_width = max(len(spec.name) for spec in [*models, *guides]) + 2
    data_width = max(len(name) for spec in models for name in spec.datasets) + 1
    pad = " " * name_width
    lines = ["models:"]
    for spec in models:
        lines.append(f"  {spec.name:<{name_width}}{spec.summary}")
        lines.append(
            f"  {pad}guides: {', '.join(spec.guides)}; methods: {', '.join(spec.method_names)}"
        )
        lines.append(f"  {pad}data sets (--dataset):")
        for name, text in spec.datasets.items():
            lines.append(f"  {pad}  {name:<{data_width}}{text}")
    lines.append("guides:")
    for spec in guides:
        lines.append(f"  {spec.name:<{name_width}}{spec.summary}")
    lines.append("  aliases: " + ", ".join(f"{a} = {k}" for a, k in ALIASES.items()))
    lines.append("presets: " + ", ".join(PRESET_NAMES))
    return "\n".join(lines)


def _options(args: argparse.Namespace, **overrides) -> tuple[ModelSpec, dict, str]:
    """The model's spec, its make_posterior options from the flags and the data (a built-in
    name or a CSV path), checked without importing the model."""
    spec = get_model(args.model)
    options = {}
    for dest, key in MODEL_FLAGS.items():
        value = getattr(args, dest, None)
        if value is None or (dest == "test_fraction" and key not in spec.options):
            continue
        if key not in spec.options:
            flag = "--" + {"intercept": "no-intercept"}.get(dest, dest.replace("_", "-"))
            raise ZooInputError(
                f"{flag} does not apply to {spec.name}; see zoo {args.command} --help"
            )
        options[key] = value
    options.update(overrides)
    if args.device != "cpu":
        if not spec.neural:
            raise ZooInputError(
                f"--device {args.device} is for the neural models; {spec.name} runs on cpu"
            )
        options["device"] = args.device
    data = args.dataset or spec.default_dataset
    if args.data is not None:
        data = str(args.data)
    elif data not in spec.datasets:
        raise ZooInputError(
            f"unknown dataset '{data}' for {spec.name}; choose one of: "
            f"{', '.join(spec.datasets)} (or give a CSV with --data)"
        )
    return spec, options, data


def _posterior(args: argparse.Namespace, **overrides):
    spec, options, data = _options(args, **overrides)
    if options.get("device") == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ZooInputError("--device cuda: torch sees no CUDA GPU here; use --device cpu")
    if "gold" in spec.options:  # the NUTS reference runs as long as the preset asks
        options.setdefault("gold", args.preset)
    posterior = spec.make_posterior(data, seed=args.seed, **options)
    return spec, posterior


def _check_methods(spec: ModelSpec, names: list[str], flag: str) -> None:
    """Method names that no posterior of the model can take, found without torch (whether
    a closed form applies to these data is known once the posterior is built)."""
    from guides import ALIASES, GUIDES

    closed = {m for model in MODELS.values() for m in model.closed_forms}
    offered = ", ".join(spec.method_names)
    for raw in names:
        name = ALIASES.get(raw, raw)
        if spec.methods and name in spec.methods:
            continue
        if name not in {"nuts", "nuts_pyro", *closed, *GUIDES}:
            raise ZooInputError(f"unknown method '{raw}'; choose from: {offered}")
        if name in GUIDES and name not in spec.guides:
            raise ZooInputError(
                f"guide '{name}' does not apply to {spec.name}; it takes: {', '.join(spec.guides)}"
            )
        if name in closed and name not in spec.closed_forms:
            raise ZooInputError(
                f"{flag}: method '{name}' is not available for {spec.name}; choose from: {offered}"
            )


def _check(args: argparse.Namespace) -> tuple[list[int] | None, Path]:
    """Check every argument that can be checked without torch, and the out-dir; return the
    numbers of components (several: choose K) and the out-dir."""
    spec = get_model(args.model)
    if args.preset is None:
        args.preset = spec.default_preset
    if args.preset not in PRESET_NAMES:
        raise ZooInputError(
            f"unknown preset '{args.preset}'; choose one of: {', '.join(PRESET_NAMES)}"
        )
    ks = None
    if args.num_components is not None:
        if "num_components" not in spec.options:
            raise ZooInputError(
                f"--num-components does not apply to {spec.name}; see zoo {args.command} --help"
            )
        ks = parse_ks(args.num_components)
        if len(ks) > 1 and args.command != "compare":
            raise ZooInputError(
                "zoo fit takes one --num-components; compare several with zoo compare"
            )
        args.num_components = ks[0] if len(ks) == 1 else None
    spec, _, data = _options(args)
    if ks is not None and len(ks) > 1 and args.reference not in (None, "nuts"):
        raise ZooInputError("choosing K judges every method against NUTS; drop --reference")
    if args.command == "fit":
        _check_methods(spec, [args.method], "--method")
    else:
        _check_methods(spec, args.methods or [], "--methods")
        if args.reference not in (None, "none"):
            _check_methods(spec, [args.reference], "--reference")
    if args.batch_size is not None and not spec.minibatch:
        raise ZooInputError(f"--batch-size does not apply to {spec.name}; it fits every row")
    for flag, value in (
        ("--encoder", args.encoder),
        ("--amortized-globals", args.amortized_globals),
    ):
        if value is not None and "amortized" not in spec.guides:
            raise ZooInputError(f"{flag} is for the amortized guide, which {spec.name} has not")
        if value is not None and spec.methods:
            raise ZooInputError(
                f"{flag} does not apply to {spec.name}: each of its methods names its encoder"
                " (see zoo list); choose methods with --methods"
            )
    stem = Path(data).stem
    if args.command == "fit":
        from guides import ALIASES

        default_dir = (
            Path("reports") / f"{spec.name}-{stem}-{ALIASES.get(args.method, args.method)}"
        )
    elif ks is not None and len(ks) > 1:
        default_dir = Path("reports") / f"{spec.name}-{stem}-k"
    else:
        default_dir = Path("reports") / f"{spec.name}-{stem}"
    out_dir = args.out_dir or default_dir
    check_writable(out_dir)
    if args.checkpoint_dir is not None:
        if ks is not None and len(ks) > 1:
            raise ZooInputError("--checkpoint-dir is for one K at a time; drop it or give one K")
        check_writable(args.checkpoint_dir, "--checkpoint-dir")
    return ks, out_dir


def _run(args: argparse.Namespace, ks: list[int] | None, out_dir: Path) -> int:
    from comparisons.compare import compare
    from comparisons.runners import resolve_methods

    if ks is not None and len(ks) > 1:
        return _select(args, ks, out_dir)
    spec, posterior = _posterior(args)
    if args.command == "fit":
        methods = resolve_methods(posterior, [args.method])
        reference = "none"
    else:
        methods = args.methods
        reference = args.reference
    result = compare(
        posterior,
        methods=methods,
        reference=reference,
        follow_ups=args.command != "fit",  # one method's files, not the studies it leads to
        checkpoint_dir=args.checkpoint_dir,
        **_run_options(args, spec, posterior.num_data, out_dir),
    )
    _print_methods(result.results)
    print(f"report: {out_dir / 'index.html'}")
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    """``zoo calibrate``: its arguments checked, then the replications on Dask."""
    spec, options, data = _options(args)
    if args.preset not in PRESET_NAMES:
        raise ZooInputError(
            f"unknown preset '{args.preset}'; choose one of: {', '.join(PRESET_NAMES)}"
        )
    if args.replications < 2:
        raise ZooInputError(f"--replications must be at least 2, got {args.replications}")
    _check_workers(args)
    out_dir = args.out_dir or Path("reports") / f"calibrate-{spec.name}-{Path(data).stem}"
    check_writable(out_dir)
    import pyro
    import torch

    torch.set_num_threads(1)
    pyro.enable_validation(False)
    if not hasattr(spec.module, "simulated_posterior"):
        able = [m for m in MODELS if hasattr(get_model(m).module, "simulated_posterior")]
        raise ZooInputError(
            f"zoo calibrate does not run on {spec.name} yet; it runs on {', '.join(able)}"
        )
    from comparisons.calibration import calibrate, design, point_methods
    from comparisons.runners import resolve_methods

    posterior = design(spec.name, data, options, args.seed)  # the data's checks, the methods
    chosen = resolve_methods(posterior, args.methods)
    points = point_methods(posterior, chosen)
    if args.methods and points:
        gives = "gives a point estimate" if len(points) == 1 else "give point estimates"
        raise ZooInputError(
            f"{' and '.join(points)} {gives}, not draws: SBC ranks the truth among a method's"
            " draws, so a point has nothing to calibrate; leave it out of --methods"
        )
    methods = [m.name for m in chosen if m.name not in points]
    results = calibrate(
        spec.name, data, options, methods, replications=args.replications, seed=args.seed,
        preset=args.preset, out_dir=out_dir, scheduler=args.scheduler, workers=args.workers,
        progress=_progress(args),
    )  # fmt: skip
    for method, record in results["methods"].items():
        d = record["diagnostics"]
        print(f"{method:<12} {d['parameters_calibrated']} of {d['parameters']} parameters"
              f" calibrated; {d['verdict']}")  # fmt: skip
    print(f"report: {out_dir / 'index.html'}")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    """``zoo sweep FILE.toml``: the file checked, then its comparisons on Dask."""
    from comparisons.sweep import load_sweep, run_sweep

    sweep = load_sweep(args.file)  # every error of the file before a worker starts
    _check_workers(args)
    out_dir = args.out_dir or Path("reports") / f"sweep-{args.file.stem}"
    check_writable(out_dir)
    summary = run_sweep(sweep, out_dir, scheduler=args.scheduler, workers=args.workers,
                        progress=_progress(args))  # fmt: skip
    done = sum(v == "done" for v in summary["cells"].values())
    runs, seeds = len(sweep.runs), len(sweep.seeds)
    print(f"{done} of {len(summary['cells'])} comparisons done ({runs} run{'s' * (runs != 1)}"
          f" x {seeds} seed{'s' * (seeds != 1)})")  # fmt: skip
    for key, state in summary["cells"].items():
        if state != "done":
            print(f"{key}: {state}", file=sys.stderr)
    print(f"report: {out_dir / 'index.html'}")
    return 0 if done == len(summary["cells"]) else 1


def _run_options(args: argparse.Namespace, spec, num_data: int, out_dir: Path) -> dict:
    """The keyword arguments that ``compare`` and ``select_components`` take alike."""
    return {
        "seed": args.seed,
        "preset": _preset(args, spec, num_data),
        "out_dir": out_dir,
        "progress": _progress(args),
        "on_method": _print_finished,
    }


def _progress(args: argparse.Namespace) -> bool:
    """Progress bars: as asked, else when stderr is a terminal (not in CI, not in tests)."""
    return sys.stderr.isatty() if args.progress is None else args.progress


def _print_finished(method: str, info: dict) -> None:
    """One line on stderr as each method finishes (the verdicts follow on stdout at the end)."""
    k = f"K={info['k']} " if "k" in info else ""
    if info["status"] == "ok":
        line = f"{k}{method} finished in {info['wall_s']:.1f} s"
    else:
        line = f"{k}{method} failed after {info['wall_s']:.1f} s: {info.get('error', '')}"
    print(f"zoo: {line}", file=sys.stderr, flush=True)


def _print_methods(results: dict) -> None:
    """One line a method: its name, seconds and verdict."""
    width = max(11, *(len(m) + 1 for m in results["methods"]))
    for method, record in results["methods"].items():
        seconds = record["cost"]["wall_s"]
        print(f"{method:<{width}} {seconds:7.1f} s  {record.get('verdict', '')}")


def _preset(args: argparse.Namespace, spec, num_rows: int):
    """The named preset, with minibatch SVI (--batch-size) and the amortized guide's options
    (--encoder, --amortized-globals) where they are asked for."""
    import dataclasses

    from comparisons.runners import PRESETS
    from guides import ENCODERS
    from guides.amortized import GLOBAL_GUIDES

    preset = PRESETS[args.preset]
    amortized = {}
    for flag, value, key, choices in (
        ("--encoder", args.encoder, "encoder", ENCODERS),
        ("--amortized-globals", args.amortized_globals, "global_guide", GLOBAL_GUIDES),
    ):
        if value is None:
            continue
        if "amortized" not in spec.guides:
            raise ZooInputError(f"{flag} is for the amortized guide, which {spec.name} has not")
        if value not in choices:
            raise ZooInputError(f"unknown {flag} '{value}'; choose one of: {', '.join(choices)}")
        amortized[key] = value
    if amortized:
        preset = dataclasses.replace(preset, guide_options={"amortized": amortized})
    if args.chains_in_parallel is not None:
        preset = dataclasses.replace(preset, chains_in_parallel=args.chains_in_parallel)
    if args.batch_size is None:
        return preset
    if not spec.minibatch:
        raise ZooInputError(f"--batch-size does not apply to {spec.name}; it fits every row")
    if not 1 <= args.batch_size <= num_rows:
        raise ZooInputError(
            f"--batch-size must be between 1 and {num_rows} (the rows fitted), got"
            f" {args.batch_size}"
        )
    fit = dataclasses.replace(preset.fit, subsample_size=args.batch_size)
    return dataclasses.replace(preset, fit=fit)


def _select(args: argparse.Namespace, ks: list[int], out_dir: Path) -> int:
    from comparisons.runners import resolve_methods
    from comparisons.select import select_components

    spec, first = _posterior(args, num_components=ks[0])
    methods = None
    if args.methods is not None:
        methods = [m.name for m in resolve_methods(first, args.methods)]
    result = select_components(
        lambda k: first if k == ks[0] else _posterior(args, num_components=k)[1],
        ks,
        methods=methods,
        **_run_options(args, spec, first.num_data, out_dir),
    )
    _print_methods(result.results)
    chosen = result.results["selection"]["chosen"]
    print("chosen K: " + ", ".join(f"{k} {v}" for k, v in chosen.items()))
    for warning in result.results["selection"].get("warnings", {}).values():
        print(f"caution: {warning}")
    print(f"report: {out_dir / 'index.html'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``zoo`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="zoo: %(message)s")
    try:
        if args.command == "list":
            print(_list())
            return 0
        if args.command == "report":
            from comparisons.report import render

            print(f"report: {render(args.dir)}")
            return 0
        if args.command == "calibrate":
            return _calibrate(args)
        if args.command == "sweep":
            return _sweep(args)
        ks, out_dir = _check(args)  # before torch: argument errors answer at once
        import pyro
        import torch

        # The command is the application, so it may set the process up: one thread is faster
        # on the small models (STYLE.md). Dtype and device are not process settings: each
        # posterior is built in its model's dtype (float64; float32 for the VAEs' networks)
        # on --device (make_posterior(dtype=, device=)). The VAEs' training runs on this one
        # thread too: at these sizes a second makes no epoch faster (benchmarks/bench_vae.py)
        # and slows every one on a busy machine; their measurements use every core
        # (zoo.tensors.all_cores).
        torch.set_num_threads(1)
        pyro.enable_validation(False)
        return _run(args, ks, out_dir)
    except ZooInputError as exc:
        print(f"zoo {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.command in ("calibrate", "sweep"):
            print("zoo: interrupted; the finished tasks are kept: run the same command again"
                  " to go on", file=sys.stderr)  # fmt: skip
        else:
            print("zoo: interrupted; nothing was written to the out-dir", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
