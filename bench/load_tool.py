"""Serving load from guidellm (vLLM project's load generator), not a home-made client.

    .venv/bin/python -m bench.load_tool --target http://127.0.0.1:8000 --processor MODEL_DIR \
        [--profile concurrent --rate 4] [--prompt-tokens 128 --output-tokens 32] \
        [--max-seconds 20] [--report bench/results/guidellm-x.json]

guidellm lives in its own virtual environment (GUIDELLM_VENV, default `.venv-guidellm` at the
repository root, git-ignored), created on first use with `uv venv` + `uv pip install` when uv is
on PATH, else `python -m venv` + pip, pinned to GUIDELLM_VERSION; the project's own environment
never imports it. `run_guidellm` runs `guidellm run` as a subprocess against an OpenAI base URL
(`/v1/completions`, streaming, ignore_eos so every request generates its output length) with
synthetic prompts of a given token count (or a JSONL file of `prompt` / `output_tokens_count`
rows), one profile (concurrent streams, constant or Poisson rate, synchronous, throughput), a
bound in seconds and/or requests, optionally an API key (`Authorization: Bearer`, as a client
of one tenant sends it), and writes guidellm's JSON report; `parse_report` reads the report
back into the few figures the benchmarks print (`Figures`), `request_outcomes` how its requests
ended (answered, HTTP status of the errored ones: a 429 is a shed request). The tokenizer
guidellm counts and synthesizes prompts with comes from a local Hugging Face directory
(`--processor`, e.g. the one `pdserve model init` writes): nothing is fetched from the Hugging
Face hub.

Exits 2 with a message (raises ToolUnavailable in-process) when guidellm cannot be installed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GUIDELLM_VERSION = "0.8.1"
GUIDELLM_VENV = Path(os.environ.get("GUIDELLM_VENV", REPO / ".venv-guidellm"))
_MARKER = ".pdserve-guidellm"
PROFILES = ("concurrent", "constant", "poisson", "synchronous", "throughput")


class ToolUnavailable(RuntimeError):
    """guidellm could not be installed or run at all (not: a benchmark's requests failed)."""


def _venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def ensure_guidellm(venv: Path = GUIDELLM_VENV, version: str = GUIDELLM_VERSION,
                    quiet: bool = False) -> Path:
    """The `guidellm` executable of `venv`, installing guidellm==version there first when the
    environment is missing or holds another version. Raises ToolUnavailable on failure."""
    exe = venv / "bin" / "guidellm"
    marker = venv / _MARKER
    if exe.is_file() and marker.is_file() and marker.read_text().strip() == version:
        return exe
    say = (lambda *_: None) if quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    begin = time.monotonic()
    uv = shutil.which("uv")
    try:
        if uv:
            say(f"installing guidellm=={version} into {venv} (uv)...")
            if not _venv_python(venv).is_file():
                _check([uv, "venv", "--quiet", "--python", sys.executable, str(venv)])
            _check([uv, "pip", "install", "--quiet", "--python", str(_venv_python(venv)),
                    f"guidellm=={version}"])
        else:
            say(f"installing guidellm=={version} into {venv} (venv + pip)...")
            if not _venv_python(venv).is_file():
                _check([sys.executable, "-m", "venv", str(venv)])
            _check([str(_venv_python(venv)), "-m", "pip", "install", "--quiet",
                    f"guidellm=={version}"])
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        raise ToolUnavailable(f"cannot install guidellm=={version} into {venv}: "
                              f"{detail.strip()[-2000:]}") from exc
    if not exe.is_file():
        raise ToolUnavailable(f"guidellm=={version} installed but {exe} is missing")
    marker.write_text(version + "\n")
    say(f"guidellm=={version} installed in {time.monotonic() - begin:.0f}s")
    return exe


def _check(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True)


@dataclass
class Load:
    """One guidellm benchmark: a profile, the requests' shape, and its bounds."""

    profile: str = "concurrent"  # one of PROFILES
    rate: float | None = 4  # streams (concurrent) or requests/s (constant, poisson)
    prompt_tokens: int = 128  # synthetic data: tokens per prompt (the processor's tokenizer)
    output_tokens: int = 32  # ... and generated per request (max_tokens, ignore_eos)
    prompt_tokens_stdev: int | None = None
    prompt_tokens_min: int | None = None
    prompt_tokens_max: int | None = None
    output_tokens_stdev: int | None = None
    output_tokens_min: int | None = None
    output_tokens_max: int | None = None
    data_file: Path | None = None  # instead: JSONL rows {"prompt", "output_tokens_count"}
    max_seconds: float | None = 20.0
    max_requests: int | None = None
    seed: int = 42
    sample_size: int | None = 10  # request records kept in the report (metrics use them all)
    request_timeout: float | None = None  # seconds a request may take (guidellm: no limit)
    ttft_slo_ms: float | None = None  # goodput: TTFT and per-request mean inter-token gap
    itl_slo_ms: float | None = None  # (guidellm's GoodputSLO ttft_ms / tpot_ms)

    def spec(self) -> dict:
        """The `spec` of a guidellm scenario (all but backend, tokenizer and output)."""
        if self.profile not in PROFILES:
            raise ValueError(f"profile {self.profile!r}: choose from {', '.join(PROFILES)}")
        profile: dict = {"kind": self.profile}
        if self.profile == "concurrent":
            profile["streams"] = [int(self.rate or 1)]
        elif self.profile in ("constant", "poisson"):
            if not self.rate:
                raise ValueError(f"profile {self.profile} needs a rate (requests/s)")
            profile["rate"] = [self.rate]
        data: dict
        if self.data_file is not None:
            data = {"kind": "json_file", "path": str(Path(self.data_file).resolve())}
        else:
            data = {"kind": "synthetic_text", "prompt_tokens": self.prompt_tokens,
                    "output_tokens": self.output_tokens}
            for key in ("prompt_tokens_stdev", "prompt_tokens_min", "prompt_tokens_max",
                        "output_tokens_stdev", "output_tokens_min", "output_tokens_max"):
                if getattr(self, key) is not None:
                    data[key] = getattr(self, key)
        constraints = []
        if self.max_seconds:
            constraints.append({"kind": "max_duration", "seconds": self.max_seconds})
        if self.max_requests:
            constraints.append({"kind": "max_requests", "count": self.max_requests})
        if not constraints:
            raise ValueError("bound the load: max_seconds and/or max_requests")
        metrics: dict = {"kind": "generative", "sample_size": self.sample_size}
        slo = {k: v for k, v in (("ttft_ms", self.ttft_slo_ms), ("tpot_ms", self.itl_slo_ms))
               if v is not None}
        if slo:
            metrics["slo"] = slo
        return {"profile": profile, "data": [data], "constraints": constraints,
                "seed": {"kind": "static", "value": self.seed}, "metrics": metrics}


@dataclass
class Figures:
    """What our serving benchmarks print, from one guidellm benchmark (latencies in ms)."""

    label: str
    requests_per_s: float  # successful requests / s
    output_tok_s: float  # output tokens / s, all requests
    ttft_p50: float
    ttft_p90: float
    ttft_p99: float
    itl_p50: float
    itl_p90: float
    itl_p95: float
    successes: int
    errors: int
    incomplete: int
    duration_s: float
    mean_concurrency: float
    slo_attainment: float | None = None  # share of requests meeting the SLOs (with SLOs set)
    goodput: float | None = None  # requests/s meeting them


def _stat(metrics: dict, name: str, key: str, status: str = "successful") -> float:
    dist = (metrics.get(name) or {}).get(status) or {}
    value = dist.get(key) if key in ("mean", "median") else dist.get("percentiles", {}).get(key)
    return float("nan") if value is None else float(value)


def parse_report(path: Path) -> list[Figures]:
    """One Figures per benchmark in a guidellm JSON report (`--output kind=json`)."""
    report = json.loads(Path(path).read_text())
    out = []
    for bench in report.get("benchmarks", []):
        metrics = bench["metrics"]
        totals = metrics.get("request_totals", {})
        strategy = bench.get("config", {}).get("strategy", {})
        kind = strategy.get("type_", "?")
        detail = strategy.get("streams") or strategy.get("rate")
        label = f"{kind}@{detail:g}" if isinstance(detail, int | float) else kind
        out.append(Figures(
            label=label,
            requests_per_s=_stat(metrics, "requests_per_second", "mean"),
            output_tok_s=_stat(metrics, "output_tokens_per_second", "mean", "total"),
            ttft_p50=_stat(metrics, "time_to_first_token_ms", "p50"),
            ttft_p90=_stat(metrics, "time_to_first_token_ms", "p90"),
            ttft_p99=_stat(metrics, "time_to_first_token_ms", "p99"),
            itl_p50=_stat(metrics, "inter_token_latency_ms", "p50"),
            itl_p90=_stat(metrics, "inter_token_latency_ms", "p90"),
            itl_p95=_stat(metrics, "inter_token_latency_ms", "p95"),
            successes=int(totals.get("successful", 0)),
            errors=int(totals.get("errored", 0)),
            incomplete=int(totals.get("incomplete", 0)),
            duration_s=float(bench.get("duration", float("nan"))),
            mean_concurrency=_stat(metrics, "request_concurrency", "mean"),
            slo_attainment=metrics.get("slo_attainment"),
            goodput=(_stat(metrics, "request_goodput", "mean")
                     if metrics.get("request_goodput") else None),
        ))
    return out


@dataclass
class Outcomes:
    """How one guidellm benchmark's requests ended, from its per-request records (guidellm keeps
    their timings, token counts and errors for every request, whatever `sample_size`)."""

    answered: int
    output_tokens: int  # of the answered requests
    http_errors: dict[int, int]  # HTTP status -> errored requests (429: shed by the server)
    other_errors: int  # errored without an HTTP status (a broken stream, a timeout)
    incomplete: int
    start: float  # the benchmark's start and end (epoch seconds)
    end: float


# guidellm records an HTTP error as httpx's HTTPStatusError repr: "... error '429 Too Many ..."
_HTTP_STATUS = re.compile(r"error '(\d{3}) ")


def request_outcomes(path: Path) -> list[Outcomes]:
    """One Outcomes per benchmark in a guidellm JSON report."""
    out = []
    for bench in json.loads(Path(path).read_text()).get("benchmarks", []):
        requests = bench.get("requests") or {}
        answered = requests.get("successful") or []
        statuses: dict[int, int] = {}
        other = 0
        for record in requests.get("errored") or []:
            found = _HTTP_STATUS.search((record.get("info") or {}).get("error") or "")
            if found:
                statuses[int(found[1])] = statuses.get(int(found[1]), 0) + 1
            else:
                other += 1
        out.append(Outcomes(
            answered=len(answered),
            output_tokens=sum(int((r.get("output_metrics") or {}).get("text_tokens") or 0)
                              for r in answered),
            http_errors=statuses, other_errors=other,
            incomplete=len(requests.get("incomplete") or []),
            start=float(bench.get("start_time", float("nan"))),
            end=float(bench.get("end_time", float("nan")))))
    return out


def backend_spec(target: str, model: str, timeout: float | None,
                 api_key: str | None = None) -> dict:
    """guidellm's OpenAI backend for `target`'s /v1/completions; `api_key`: sent as
    `Authorization: Bearer <key>` on every request (the report shows it masked)."""
    backend = {"kind": "openai_http", "target": target, "model": model,
               "request_format": "/v1/completions", "timeout": timeout}
    if api_key is not None:
        backend["api_key"] = api_key
    return backend


def guidellm_version_of(path: Path) -> str:
    return json.loads(Path(path).read_text()).get("metadata", {}).get("guidellm_version", "?")


def run_guidellm(target: str, load: Load, report: Path, processor: Path, *,
                 model: str = "tiny", log: Path | None = None, worker_processes: int = 2,
                 timeout: float | None = None, api_key: str | None = None) -> list[Figures]:
    """Run guidellm against the OpenAI base URL `target`, write its JSON report to `report`,
    and return its figures. guidellm's console output goes to `log` (or is discarded).
    `api_key`: see `backend_spec`."""
    exe = ensure_guidellm()
    report = Path(report).resolve()
    report.parent.mkdir(parents=True, exist_ok=True)
    report.unlink(missing_ok=True)
    spec = {"backend": backend_spec(target, model, load.request_timeout, api_key),
            "tokenizer": {"kind": "huggingface_auto", "model": str(Path(processor).resolve())},
            **load.spec(),
            "outputs": [{"kind": "json", "path": str(report)}]}
    # The whole run as a guidellm scenario file (nested settings, paths with any characters);
    # the report repeats it under config.spec.
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as scenario:
        json.dump({"spec": spec}, scenario, indent=1)
    cmd = [str(exe), "run", "--scenario", scenario.name, "--disable-progress"]
    log_path = Path(log).resolve() if log else None
    env = {**os.environ,
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           # The load generator shares the machine with the servers it measures: few processes.
           "GUIDELLM__MAX_WORKER_PROCESSES": str(worker_processes),
           "GUIDELLM__LOGGING__LOG_FILE": str(log_path.with_suffix(".guidellm.log")
                                              if log_path else os.devnull),
           "OMP_NUM_THREADS": "1"}
    env.pop("VIRTUAL_ENV", None)
    out = open(log_path, "w") if log_path else subprocess.DEVNULL  # noqa: SIM115
    try:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                              timeout=timeout, cwd=report.parent)
    finally:
        Path(scenario.name).unlink(missing_ok=True)
        if log_path:
            out.close()  # type: ignore[union-attr]
    if proc.returncode != 0 or not report.is_file():
        tail = log_path.read_text()[-3000:] if log_path else "(no log kept)"
        raise RuntimeError(f"guidellm exited {proc.returncode}; command: {' '.join(cmd)}; "
                           f"scenario: {json.dumps(spec)}\n{tail}")
    return parse_report(report)


def table(rows: dict[str, Figures]) -> str:
    """A markdown table of figures, one row per named run."""
    lines = ["| target | req/s | output tok/s | TTFT p50 / p99 | ITL p50 / p95 | ok / errors / "
             "incomplete | mean concurrency |",
             "|---|---|---|---|---|---|---|"]
    for name, f in rows.items():
        lines.append(f"| {name} | {f.requests_per_s:.2f} | {f.output_tok_s:.1f} | "
                     f"{f.ttft_p50:.1f} / {f.ttft_p99:.1f} ms | {f.itl_p50:.1f} / "
                     f"{f.itl_p95:.1f} ms | {f.successes} / {f.errors} / {f.incomplete} | "
                     f"{f.mean_concurrency:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", help="OpenAI base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("--processor", type=Path, help="local Hugging Face dir (tokenizer)")
    parser.add_argument("--model", default="tiny", help="served model name")
    parser.add_argument("--profile", default="concurrent", choices=PROFILES)
    parser.add_argument("--rate", type=float, default=4, help="streams, or requests/s")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--output-tokens", type=int, default=32)
    parser.add_argument("--data-file", type=Path, help="JSONL: prompt, output_tokens_count")
    parser.add_argument("--max-seconds", type=float, default=20.0)
    parser.add_argument("--max-requests", type=int)
    parser.add_argument("--report", type=Path, default=REPO / "bench/results/guidellm.json")
    parser.add_argument("--install-only", action="store_true", help="install guidellm, exit")
    parser.add_argument("--parse", type=Path, help="print the figures of an existing report")
    args = parser.parse_args()
    try:
        if args.parse:
            for figures in parse_report(args.parse):
                print(json.dumps(asdict(figures)))
            return
        exe = ensure_guidellm()
        if args.install_only:
            print(exe)
            return
        if not args.target or not args.processor:
            parser.error("--target and --processor are required")
        load = Load(profile=args.profile, rate=args.rate, prompt_tokens=args.prompt_tokens,
                    output_tokens=args.output_tokens, data_file=args.data_file,
                    max_seconds=args.max_seconds, max_requests=args.max_requests)
        figures = run_guidellm(args.target, load, args.report, args.processor,
                               model=args.model, log=args.report.with_suffix(".log"))
    except ToolUnavailable as exc:
        print(f"load_tool: guidellm unavailable: {exc}", file=sys.stderr)
        sys.exit(2)
    print(table({f.label: f for f in figures}))


if __name__ == "__main__":
    main()
