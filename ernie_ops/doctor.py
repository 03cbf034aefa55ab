"""`ernie-ops doctor`: what a node has, what is missing, and what to do about each problem."""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata as md
import importlib.util
import platform
import shutil
import sys
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from packaging.version import InvalidVersion, Version

from ernie_ops.extras import hide_framework_advisory

# FastDeploy release -> the paddlepaddle-gpu it is built against (FastDeploy's install docs; 2.4 and
# 2.5 read in docs/get_started/installation/nvidia_gpu.md of release/2.4 and of release/2.5 at
# f3fb7e032, the commit of serve/data/fastdeploy-flags-2.5.json).
FASTDEPLOY_PADDLE = {
    "2.0": "3.1.0",
    "2.1": "3.1.1",
    "2.2": "3.2.0",
    "2.3": "3.2.1",
    "2.4": "3.3.0",
    "2.5": "3.3.1",
}
# FastDeploy's prebuilt wheels are compiled for these GPU architectures only.
FASTDEPLOY_SM = {(8, 0), (8, 6), (8, 9), (9, 0)}
MIN_PADDLE = Version("3.1")
MIN_FREE_DISK_GB = 50  # an ERNIE-4.5-21B-A3B bf16 checkpoint alone is about 44 GB

OK, INFO, WARN, FAIL = "ok", "info", "warn", "fail"


@dataclass
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""
    data: dict = field(default_factory=dict)


@dataclass
class Report:
    checks: list[Check]

    @property
    def ok(self) -> bool:
        return all(c.status != FAIL for c in self.checks)

    def to_dict(self) -> dict:
        return {"ok": self.ok, "checks": [asdict(c) for c in self.checks]}


def dist_version(*names: str) -> tuple[str, str] | None:
    """(distribution, version) of the first installed distribution among `names`."""
    for name in names:
        with contextlib.suppress(md.PackageNotFoundError):
            return name, md.version(name)
    return None


def _short_error(err: BaseException) -> str:
    return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}".rstrip(": ")


def check_python() -> list[Check]:
    version = platform.python_version()
    data = {"version": version, "executable": sys.executable, "platform": platform.platform()}
    return [Check("python", OK, f"Python {version} on {platform.system()} {platform.machine()}", data=data)]


def check_paddle() -> list[Check]:
    found = dist_version("paddlepaddle-gpu", "paddlepaddle")
    install = (
        "CPU: `pip install -c constraints.txt -e '.[cpu]'` (scripts/setup.sh); "
        "GPU nodes: scripts/setup_gpu.sh (paddlepaddle-gpu 3.x from Paddle's package index)"
    )
    if found is None:
        return [Check("paddle", FAIL, "PaddlePaddle is not installed", install)]
    dist, version = found
    try:
        import paddle
    except Exception as err:
        return [Check("paddle", FAIL, f"{dist} {version} does not import ({_short_error(err)})", install)]
    checks = []
    cuda = bool(paddle.is_compiled_with_cuda())
    gpus = paddle.device.cuda.device_count() if cuda else 0
    build = f"CUDA {paddle.version.cuda()}" if cuda else "CPU build"
    data = {"distribution": dist, "version": version, "cuda": cuda, "gpu_count": gpus}
    try:
        a = paddle.ones([64, 64])
        float((a @ a).sum())  # runs a kernel on the default device
        device = paddle.device.get_device()
    except Exception as err:
        return [Check("paddle", FAIL, f"{dist} {version} cannot run a matmul ({_short_error(err)})", install)]
    data["device"] = device
    try:
        too_old = Version(version) < MIN_PADDLE
    except InvalidVersion:
        too_old = False
    if too_old:
        checks.append(
            Check(
                "paddle",
                FAIL,
                f"{dist} {version} is too old for ERNIE 4.5 (needs >= {MIN_PADDLE})",
                install,
                data,
            )
        )
    else:
        checks.append(Check("paddle", OK, f"{dist} {version} ({build}), device: {device}", data=data))
    checks += _gpu_checks(paddle, gpus) if cuda else [_cpu_build_gpu_check()]
    return checks


def _cpu_build_gpu_check() -> Check:
    """A CPU build of Paddle: fine without a GPU, a mistake on a GPU node (ernie_ops.devices says)."""
    from ernie_ops.devices import gpus

    found = gpus()
    if not found:
        return Check("gpu", INFO, "no GPU: CPU training and serving", data={"reason": found.reason})
    names = ", ".join(dict.fromkeys(g.name for g in found.gpus))
    return Check(
        "gpu",
        WARN,
        f"{len(found)} GPU(s) here ({names}) but Paddle is a CPU build",
        "install paddlepaddle-gpu (scripts/setup_gpu.sh) to train and serve on them",
        {"gpus": [g.describe() for g in found.gpus]},
    )


def _gpu_checks(paddle, count: int) -> list[Check]:
    if count == 0:
        from ernie_ops.devices import gpus

        why = gpus().reason
        return [
            Check(
                "gpu",
                WARN,
                "a CUDA build of Paddle but no visible GPU" + (f" ({why})" if why else ""),
                "check the NVIDIA driver and CUDA_VISIBLE_DEVICES",
            )
        ]
    checks = []
    for i in range(count):
        props = paddle.device.cuda.get_device_properties(i)
        sm = (props.major, props.minor)
        gib = props.total_memory / 2**30
        data = {"index": i, "name": props.name, "compute_capability": f"{sm[0]}.{sm[1]}", "memory_gib": gib}
        detail = f"GPU {i}: {props.name}, compute capability {sm[0]}.{sm[1]}, {gib:.0f} GiB"
        if sm not in FASTDEPLOY_SM:
            checks.append(
                Check(
                    f"gpu{i}",
                    WARN,
                    detail,
                    "FastDeploy's prebuilt wheels support SM 80/86/89/90 only; build it from source",
                    data,
                )
            )
        else:
            checks.append(Check(f"gpu{i}", OK, detail, data=data))
    return checks


def check_erniekit() -> list[Check]:
    found = dist_version("erniekit")
    install = (
        "CPU: `pip install -c constraints.txt -e '.[cpu]'` (erniekit 1.0.1, the only wheel that ships "
        "`ernie`); GPU nodes: install ERNIEKit from a source checkout (scripts/setup_gpu.sh)"
    )
    if found is None:
        return [Check("erniekit", FAIL, "ERNIEKit is not installed", install)]
    version = found[1]
    try:
        importlib.import_module("ernie.modeling_moe")
        importlib.import_module("erniekit.launcher")
    except ModuleNotFoundError as err:
        reason = f"{_short_error(err)}"
        if err.name == "ernie":
            reason = f"the erniekit {version} wheel does not ship the `ernie` package"
        return [Check("erniekit", FAIL, f"erniekit {version} installed but unusable: {reason}", install)]
    except Exception as err:
        return [Check("erniekit", FAIL, f"erniekit {version} fails to import: {_short_error(err)}", install)]
    return [Check("erniekit", OK, f"erniekit {version}, `ernie` imports", data={"version": version})]


def check_paddleformers() -> list[Check]:
    found = dist_version("paddleformers")
    if found is None:
        return [
            Check(
                "paddleformers",
                FAIL,
                "PaddleFormers is not installed",
                "pip install -c constraints.txt paddleformers",
            )
        ]
    return [Check("paddleformers", OK, f"paddleformers {found[1]}", data={"version": found[1]})]


def check_data_stack() -> list[Check]:
    """ERNIEKit's data loading needs numpy, pyarrow and datasets in a matching set."""
    versions = {n: (dist_version(n) or ("", "missing"))[1] for n in ("numpy", "pyarrow", "datasets")}
    text = ", ".join(f"{n} {v}" for n, v in versions.items())
    try:
        importlib.import_module("datasets")
    except Exception as err:
        return [
            Check(
                "data-stack",
                FAIL,
                f"`import datasets` fails ({_short_error(err)}); {text}",
                "reinstall the pinned set: pip install -c constraints.txt numpy pyarrow datasets",
                versions,
            )
        ]
    return [Check("data-stack", OK, text, data=versions)]


def check_fastdeploy(paddle_version: str | None, gpu_count: int) -> list[Check]:
    fd = dist_version("fastdeploy-gpu")
    checks = []
    unrelated = dist_version("fastdeploy")
    if unrelated:
        checks.append(
            Check(
                "fastdeploy",
                WARN,
                f"the PyPI package 'fastdeploy' {unrelated[1]} is an unrelated project",
                "pip uninstall fastdeploy; FastDeploy for ERNIE is 'fastdeploy-gpu' from Paddle's index",
            )
        )
    if fd is None:
        checks.append(
            Check(
                "fastdeploy",
                INFO,
                "FastDeploy not installed (GPU nodes only); the embedded Paddle backend serves on CPU",
                "on a GPU node: scripts/setup_gpu.sh installs fastdeploy-gpu",
            )
        )
        return checks
    version = fd[1]
    data = {"version": version}
    series = ".".join(version.split(".")[:2])
    wanted = FASTDEPLOY_PADDLE.get(series)
    if gpu_count == 0:
        checks.append(
            Check("fastdeploy", WARN, f"fastdeploy-gpu {version} but no GPU", "FastDeploy needs a GPU", data)
        )
    elif wanted and paddle_version and not paddle_version.startswith(wanted):
        checks.append(
            Check(
                "fastdeploy",
                WARN,
                f"fastdeploy-gpu {version} is built for paddlepaddle-gpu {wanted}, found {paddle_version}",
                f"pip install paddlepaddle-gpu=={wanted} from Paddle's index (see scripts/setup_gpu.sh)",
                data,
            )
        )
    else:
        checks.append(Check("fastdeploy", OK, f"fastdeploy-gpu {version}", data=data))
    return checks


def _erniekit_source_commit() -> str | None:
    """The git commit of an ERNIEKit installed from a source checkout (pip install -e), else None."""
    import json
    import subprocess
    from urllib.parse import unquote, urlparse

    try:
        text = md.distribution("erniekit").read_text("direct_url.json")
    except md.PackageNotFoundError:
        return None
    if not text:
        return None
    url = json.loads(text).get("url", "")
    if not url.startswith("file://"):
        return None
    try:
        result = subprocess.run(
            ["git", "-C", unquote(urlparse(url).path), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def check_versions() -> list[Check]:
    """The Paddle / FastDeploy / ERNIEKit versions found, and whether the Paddle / FastDeploy pair is
    one FastDeploy documents (FASTDEPLOY_PADDLE); for an ERNIEKit from source, its commit and
    whether a shipped schema snapshot was read from it."""
    paddle = dist_version("paddlepaddle-gpu", "paddlepaddle")
    fastdeploy = dist_version("fastdeploy-gpu")
    erniekit = dist_version("erniekit")
    commit = _erniekit_source_commit() if erniekit else None
    parts = [f"{found[0]} {found[1]}" for found in (paddle, fastdeploy, erniekit) if found]
    if commit:
        parts[-1] += f" (source at {commit[:12]})"
    data: dict = {
        "paddle": paddle[1] if paddle else None,
        "fastdeploy": fastdeploy[1] if fastdeploy else None,
        "erniekit": erniekit[1] if erniekit else None,
        "erniekit_commit": commit,
        "documented_pair": None,
    }
    if commit:
        import json

        from ernie_ops.recipe.schema import snapshots

        for version, path in snapshots().items():
            if json.loads(path.read_text(encoding="utf-8")).get("commit") == commit:
                data["schema_snapshot"] = version
    found = ", ".join(parts) or "none of paddlepaddle, fastdeploy-gpu, erniekit"
    if fastdeploy is None or paddle is None:
        return [Check("versions", INFO, f"{found}; no Paddle/FastDeploy pair to check", data=data)]
    series = ".".join(fastdeploy[1].split(".")[:2])
    wanted = FASTDEPLOY_PADDLE.get(series)
    documented = wanted is not None and paddle[1].startswith(wanted)
    data["documented_pair"] = documented
    pairs = ", ".join(f"{fd}/{pd}" for fd, pd in FASTDEPLOY_PADDLE.items())
    if documented:
        return [Check("versions", OK, f"{found}: a pair FastDeploy documents", data=data)]
    return [
        Check(
            "versions",
            WARN,
            f"{found}: not a pair FastDeploy documents"
            + (f" (fastdeploy-gpu {series} is built for paddlepaddle-gpu {wanted})" if wanted else ""),
            f"install a documented fastdeploy/paddle pair ({pairs}): scripts/setup_gpu.sh",
            data,
        )
    ]


def check_serve_extras() -> list[Check]:
    missing = [m for m in ("fastapi", "uvicorn", "httpx") if importlib.util.find_spec(m) is None]
    if missing:
        return [Check("serve-extras", WARN, f"missing {', '.join(missing)}", "pip install -e '.[serve]'")]
    return [Check("serve-extras", OK, "fastapi, uvicorn, httpx")]


def check_compiled_decode() -> list[Check]:
    """The embedded engine's compiled decode step (built at install when a C compiler is there)."""
    from ernie_ops.serve.engine import fused_decode

    why = fused_decode.problem()
    if why:
        return [
            Check(
                "cpu-decode",
                WARN,
                f"the compiled decode step is {why}: CPU decode steps run in numpy, 3-20% slower",
                "install a C compiler (apt-get install gcc) and reinstall: pip install -e .",
            )
        ]
    return [Check("cpu-decode", OK, "compiled decode step built")]


def check_disk(path: str = ".") -> list[Check]:
    free_gb = shutil.disk_usage(path).free / 1e9
    data = {"free_gb": round(free_gb, 1)}
    if free_gb < MIN_FREE_DISK_GB:
        return [
            Check(
                "disk",
                WARN,
                f"{free_gb:.0f} GB free here",
                f"real ERNIE 4.5 checkpoints need tens of GB; keep >= {MIN_FREE_DISK_GB} GB free",
                data,
            )
        ]
    return [Check("disk", OK, f"{free_gb:.0f} GB free", data=data)]


def run_doctor(progress: Callable[[str], None] | None = None) -> Report:
    """Probe everything; never raise. Import-time chatter of the probed packages goes to stderr."""
    checks: list[Check] = []
    with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # import-time UserWarnings of paddle/setuptools are noise here
        hide_framework_advisory()
        for probe in (check_python, check_paddle, check_erniekit, check_paddleformers, check_data_stack):
            if progress:
                progress(probe.__name__.removeprefix("check_"))
            try:
                checks += probe()
            except Exception as err:  # a probe must not take the whole report down
                checks.append(
                    Check(probe.__name__.removeprefix("check_"), FAIL, f"probe crashed: {_short_error(err)}")
                )
        paddle = next((c for c in checks if c.name == "paddle"), None)
        paddle_version = paddle.data.get("version") if paddle else None
        gpus = paddle.data.get("gpu_count", 0) if paddle else 0
        checks += check_fastdeploy(paddle_version, gpus)
        checks += check_versions()
        checks += check_serve_extras()
        checks += check_compiled_decode()
        checks += check_disk()
    return Report(checks)
