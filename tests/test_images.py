"""The container images, tested without a Docker engine: the Dockerfiles are parsed (pinned bases,
non-root users, no secrets, constrained pip installs, files that exist and are not excluded by
.dockerignore), the sshd setup matches what mpi-operator expects, build-images.sh prints the right
commands, and the pip installs of each image resolve against PyPI with the pinned constraints."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import tomllib
import yaml

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO / "images"
DOCKERFILES = {"train": IMAGES / "Dockerfile.train", "cpu": IMAGES / "Dockerfile.cpu",
               "mlflow": IMAGES / "Dockerfile.mlflow"}
BASES = {"train": re.compile(r"nvcr\.io/nvidia/tensorflow:25\.02-tf2-py3(@sha256:[0-9a-f]{64})?"),
         "cpu": re.compile(r"python:3\.11\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?"),
         "mlflow": re.compile(r"python:3\.11\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?")}
# Python of each base image (NGC 25.02: Python 3.12, see the platform notes).
PYTHON = {"train": "3.12", "cpu": "3.11", "mlflow": "3.11"}
SECRETISH = re.compile(r"SECRET|PASSWORD|PASSWD|TOKEN|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL|API_KEY",
                       re.IGNORECASE)


# -- a small Dockerfile parser -------------------------------------------------------------------

@dataclass
class Instruction:
    cmd: str
    args: str
    line: int


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped (Dockerfile syntax:
    a trailing backslash continues; `#` starts a comment only at the start of a line)."""
    out: list[Instruction] = []
    buf, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue  # comment lines inside a continued instruction are skipped
        if not buf:
            start = number
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        cmd, _, args = buf.partition(" ")
        out.append(Instruction(cmd.upper(), args.strip(), start))
        buf = ""
    assert not buf, "dangling line continuation at end of file"
    return out


def _split_assignments(args: str) -> dict[str, str]:
    pairs = {}
    for token in shlex.split(args):
        key, sep, value = token.partition("=")
        pairs[key] = value if sep else ""
    return pairs


@dataclass
class Dockerfile:
    instructions: list[Instruction]

    @classmethod
    def load(cls, path: Path) -> Dockerfile:
        return cls(parse_dockerfile(path.read_text()))

    def stages(self) -> list[list[Instruction]]:
        stages, current = [], None
        for ins in self.instructions:
            if ins.cmd == "FROM":
                current = [ins]
                stages.append(current)
            elif current is not None:
                current.append(ins)
        return stages

    def global_args(self) -> dict[str, str]:
        args = {}
        for ins in self.instructions:
            if ins.cmd == "FROM":
                break
            if ins.cmd == "ARG":
                args.update(_split_assignments(ins.args))
        return args

    def expand(self, value: str, scope: dict[str, str]) -> str:
        def sub(m):
            name = m.group(1) or m.group(2)
            assert name in scope, f"${name} has no default"
            return scope[name]
        return re.sub(r"\$\{(\w+)\}|\$(\w+)", sub, value)

    def base_images(self) -> list[str]:
        scope = self.global_args()
        return [self.expand(shlex.split(stage[0].args)[0], scope) for stage in self.stages()]

    def final_scope(self) -> dict[str, str]:
        scope = dict(self.global_args())
        for ins in self.stages()[-1]:
            if ins.cmd == "ARG":
                for key, value in _split_assignments(ins.args).items():
                    scope[key] = self.expand(value, scope) if value else scope.get(key, "")
            elif ins.cmd == "ENV":
                for key, value in _split_assignments(ins.args).items():
                    scope[key] = self.expand(value, {**scope, "PATH": ""}) if value else ""
        return scope

    def final_user(self) -> str | None:
        user = None
        scope = self.final_scope()
        for ins in self.stages()[-1]:
            if ins.cmd == "USER":
                user = self.expand(ins.args, scope)
        return user

    def runs(self) -> list[str]:
        return [ins.args for ins in self.instructions if ins.cmd == "RUN"]

    def copies(self) -> list[tuple[list[str], str]]:
        out = []
        for ins in self.instructions:
            if ins.cmd in ("COPY", "ADD"):
                tokens = [t for t in shlex.split(ins.args) if not t.startswith("--")]
                out.append((tokens[:-1], tokens[-1]))
        return out


def pip_installs(run: str) -> list[list[str]]:
    """Argument lists of every `pip install` inside one RUN (split on shell operators)."""
    lexer = shlex.shlex(run, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands, current = [], []
    for token in lexer:
        if token in ("&&", "||", ";", "|", "(", ")", "&"):
            commands.append(current)
            current = []
        else:
            current.append(token)
    commands.append(current)
    found = []
    for tokens in commands:
        for i in range(len(tokens) - 1):
            if tokens[i] == "pip" and tokens[i + 1] == "install":
                found.append(tokens[i + 2:])
    return found


def constraint_paths(args: list[str]) -> list[str]:
    out = []
    for i, tok in enumerate(args):
        if tok in ("-c", "--constraint"):
            out.append(args[i + 1])
        elif tok.startswith("--constraint="):
            out.append(tok.split("=", 1)[1])
    return out


def copy_sources(df: Dockerfile) -> dict[str, str]:
    """Image path -> repository path for every COPY (a file copied into a directory maps too)."""
    mapping = {}
    for sources, dest in df.copies():
        for src in sources:
            if dest.endswith("/"):
                mapping[dest + Path(src).name] = src
            else:
                mapping[dest] = src
    return mapping


# -- .dockerignore (Docker's rules: patterns in order, last match wins, `!` re-includes) ----------

def _pattern_regex(pattern: str) -> re.Pattern:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += r"(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += r".*"
            i += 2
        elif pattern[i] == "*":
            out += r"[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += r"[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out + r"(?:/.*)?$")  # a matched directory takes its contents with it


def dockerignore_excludes(path: str, rules: list[str]) -> bool:
    excluded = False
    for rule in rules:
        negate = rule.startswith("!")
        pattern = rule[1:] if negate else rule
        pattern = pattern.strip().strip("/")
        if _pattern_regex(pattern).match(path):
            excluded = not negate
    return excluded


def dockerignore_rules() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


# -- the parser itself ---------------------------------------------------------------------------

def test_parser_joins_continuations_and_resolves_args():
    df = Dockerfile(parse_dockerfile(
        "# syntax=docker/dockerfile:1\nARG BASE=python:3.11.9-slim-bookworm\nFROM ${BASE}\n"
        "ARG UID=1000\nRUN pip install \\\n    # a comment inside\n    -c /c.txt foo \\\n"
        "  && echo done\nUSER ${UID}\n"))
    assert [i.cmd for i in df.instructions] == ["ARG", "FROM", "ARG", "RUN", "USER"]
    assert df.base_images() == ["python:3.11.9-slim-bookworm"]
    assert df.final_user() == "1000"
    assert pip_installs(df.runs()[0]) == [["-c", "/c.txt", "foo"]]
    assert dockerignore_excludes(".venv/bin/python", ["*", "!efficientdet/"])
    assert not dockerignore_excludes("efficientdet/cli/x.py", ["*", "!efficientdet/"])
    assert dockerignore_excludes("efficientdet/__pycache__/a.pyc",
                                 ["*", "!efficientdet/", "**/__pycache__"])


# -- the Dockerfiles -----------------------------------------------------------------------------

@pytest.fixture(params=sorted(DOCKERFILES))
def image(request):
    return request.param, Dockerfile.load(DOCKERFILES[request.param])


def test_base_image_is_pinned(image):
    name, df = image
    (base,) = df.base_images()
    assert BASES[name].fullmatch(base), f"{name}: FROM {base}"
    assert not base.endswith(":latest")


def test_runs_as_a_non_root_user(image):
    name, df = image
    user = df.final_user()
    assert user, f"{name}: no USER instruction, the image would run as root"
    uid = user.split(":")[0]
    assert uid not in ("0", "root") and re.fullmatch(r"\d+", uid), \
        f"{name}: USER {user} (use a numeric non-root uid so runAsNonRoot can verify it)"


def test_no_secrets_baked_in(image):
    name, df = image
    for ins in df.instructions:
        if ins.cmd in ("ENV", "ARG", "LABEL"):
            for key, value in _split_assignments(ins.args).items():
                assert not SECRETISH.search(key), f"{name}:{ins.line} {ins.cmd} {key}"
                assert not re.search(r"-----BEGIN|AKIA[0-9A-Z]{16}", value), f"{name}:{ins.line}"
        if ins.cmd == "ADD":
            pytest.fail(f"{name}:{ins.line}: use COPY (ADD fetches URLs and unpacks archives)")
        if ins.cmd == "RUN":
            assert not re.search(r"curl[^|]*\|\s*(ba)?sh|wget[^|]*\|\s*(ba)?sh", ins.args)
            assert "ssh-keygen" not in ins.args, "keys come from mpi-operator, never the image"
    for sources, _ in df.copies():
        for src in sources:
            assert not re.search(r"(^|/)\.ssh|id_rsa|\.pem$|\.key$|(^|/)\.env$", src), src


def test_every_pip_install_uses_the_constraints_file(image):
    name, df = image
    mapping = copy_sources(df)
    installs = [args for run in df.runs() for args in pip_installs(run)]
    assert installs, f"{name}: installs nothing"
    for args in installs:
        paths = constraint_paths(args)
        assert paths, f"{name}: pip install {' '.join(args)} without -c constraints"
        for path in paths:
            assert mapping.get(path) == "constraints.txt", f"{name}: {path} is not constraints.txt"
        assert not any(a.startswith(("--extra-index-url", "--index-url", "-i", "--trusted-host"))
                       for a in args), f"{name}: other package indexes"


def test_copied_files_exist_and_pass_dockerignore(image):
    name, df = image
    rules = dockerignore_rules()
    for sources, _ in df.copies():
        for src in sources:
            assert (REPO / src).exists(), f"{name}: COPY {src} does not exist"
            assert not dockerignore_excludes(src.rstrip("/"), rules), \
                f"{name}: {src} is excluded by .dockerignore"
    for kept_out in (".venv/bin/python", ".git/HEAD", "tests/conftest.py", "manifests/x.yaml",
                     "efficientdet/__pycache__/a.pyc", "mlruns/0/meta.yaml", "secrets.env"):
        assert dockerignore_excludes(kept_out, rules), kept_out
    for module in (REPO / "setup.py", *(REPO / "efficientdet").rglob("*.py"),
                   *(REPO / "pipelines").rglob("*.py"), *(REPO / "components").rglob("*.py")):
        rel = str(module.relative_to(REPO))
        if "__pycache__" not in rel:
            assert not dockerignore_excludes(rel, rules), rel


@pytest.mark.parametrize("name", ["cpu", "train"])
def test_the_package_source_is_copied_whole(name):
    """setup.py maps pipelines/ and components/ into the package: `pip install` of the copied
    source fails without them."""
    mapping = copy_sources(Dockerfile.load(DOCKERFILES[name]))
    for src in ("pyproject.toml", "setup.py", "README.md", "efficientdet", "pipelines",
                "components"):
        assert mapping.get(f"/tmp/effdet/src/{src}") == src, f"{name}: {src} not copied"


def _pip_targets(df: Dockerfile) -> list[list[str]]:
    return [args for run in df.runs() for args in pip_installs(run)]


def _extras(args: list[str]) -> list[set[str]]:
    return [set(m.group(1).split(",")) for a in args for m in [re.search(r"/src\[([\w,]+)\]", a)]
            if m]


def test_training_image_keeps_the_base_tensorflow_and_horovod():
    df = Dockerfile.load(DOCKERFILES["train"])
    installs = _pip_targets(df)
    for args in installs:
        for arg in args:
            assert not re.match(r"(tensorflow|tensorflow-cpu|tensorflow-gpu|horovod)\b", arg), arg
    extras = [e for args in installs for e in _extras(args)]
    assert all("cpu" not in e for e in extras), "the cpu extra would install pip TensorFlow"
    # two passes: everything else first, the pipeline extra (protobuf 6) on its own after it
    assert extras[-1] == {"pipeline"} and "pipeline" not in set().union(*extras[:-1])
    assert any("import tensorflow" in run and "horovod" in run for run in df.runs())


def test_cpu_image_installs_tensorflow_cpu_then_the_pipeline_extra():
    extras = [e for args in _pip_targets(Dockerfile.load(DOCKERFILES["cpu"])) for e in _extras(args)]
    assert extras[0] >= {"cpu", "export", "reports"} and extras[-1] == {"pipeline"}


def test_sshd_setup_matches_mpi_operator_non_root_layout():
    df = Dockerfile.load(DOCKERFILES["train"])
    mapping = copy_sources(df)
    assert mapping["/etc/ssh/sshd_config"] == "images/sshd_config"
    assert mapping["/etc/ssh/ssh_config.d/mpi.conf"] == "images/ssh_config"
    assert any(ins.cmd == "EXPOSE" and "2222" in ins.args.split() for ins in df.instructions)
    assert any("openssh-server" in run for run in df.runs())

    def config(path):
        out = {}
        for line in (REPO / path).read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                key, _, value = line.partition(" ")
                out.setdefault(key.lower(), value.strip())
        return out

    sshd, ssh = config("images/sshd_config"), config("images/ssh_config")
    assert sshd["port"] == ssh["port"] == "2222"  # non-root: no port below 1024
    for key, value in {"passwordauthentication": "no", "permitrootlogin": "no", "usepam": "no",
                       "pubkeyauthentication": "yes", "strictmodes": "no"}.items():
        assert sshd[key] == value, key
    assert sshd["pidfile"].startswith("/tmp/")  # writable by the non-root user
    job = yaml.safe_load(subprocess.run(["kubectl", "kustomize", str(REPO / "manifests/smoke/lab")],
                                        capture_output=True, text=True, check=True).stdout)
    mount = job["spec"]["sshAuthMountPath"]
    assert str(Path(sshd["hostkey"]).parent) == mount
    assert str(Path(sshd["authorizedkeysfile"]).parent) == mount
    assert str(Path(ssh["identityfile"]).parent) == mount
    assert ssh["stricthostkeychecking"] == "no" and ssh["userknownhostsfile"] == "/dev/null"
    scope = df.final_scope()
    assert sshd["allowusers"] == scope["MPI_USER"] == ssh["user"]
    assert mount == f"/home/{scope['MPI_USER']}/.ssh"
    worker = job["spec"]["mpiReplicaSpecs"]["Worker"]["template"]["spec"]
    assert str(worker["securityContext"]["runAsUser"]) == scope["MPI_UID"] == df.final_user().split(":")[0]


# -- build-images.sh -----------------------------------------------------------------------------

SCRIPT = REPO / "scripts" / "build-images.sh"


def _script(*args, env=None):
    base_env = {"PATH": "/usr/bin:/bin"}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                          env={**base_env, **(env or {})}, timeout=60, check=False)


def test_build_script_dry_run_builds_and_pushes_every_image_with_one_tag():
    run = _script("--registry", "ghcr.io/acme/effdet", "--tag", "1.2.3", "--dry-run")
    assert run.returncode == 0, run.stderr
    lines = [shlex.split(line) for line in run.stdout.splitlines()]
    builds = [line for line in lines if line[:2] == ["docker", "build"]]
    pushes = [line for line in lines if line[:2] == ["docker", "push"]]
    assert len(builds) == len(pushes) == len(DOCKERFILES)
    for name, path in DOCKERFILES.items():
        ref = f"ghcr.io/acme/effdet/effdet-{name}:1.2.3"
        (build,) = [b for b in builds if b[b.index("--tag") + 1] == ref]
        assert build[build.index("--file") + 1] == str(path)
        assert build[-1] == str(REPO)  # the repository root is the build context
        assert ["docker", "push", ref] in pushes
        assert lines.index(build) < lines.index(["docker", "push", ref])
        # the images that run the package know their commit (MLflow's source commit tag)
        commits = [a for a in build if a.startswith("EFFDET_GIT_COMMIT=")]
        if name == "mlflow" or not (REPO / ".git").exists():
            assert commits == []
        else:
            assert len(commits) == 1 and re.fullmatch(r"EFFDET_GIT_COMMIT=[0-9a-f]{40}",
                                                      commits[0])


def test_build_script_options_and_refusals():
    run = _script("--only", "cpu", "--no-push", "--dry-run", "--build-arg",
                  "BASE_IMAGE=python:3.11.14-slim-bookworm@sha256:" + "a" * 64,
                  env={"EFFDET_REGISTRY": "registry.local:5000/ml", "EFFDET_IMAGE_TAG": "abc"})
    assert run.returncode == 0, run.stderr
    (line,) = [shlex.split(x) for x in run.stdout.splitlines()]
    assert line[line.index("--tag") + 1] == "registry.local:5000/ml/effdet-cpu:abc"
    assert "BASE_IMAGE=python:3.11.14-slim-bookworm@sha256:" + "a" * 64 in line
    default_tag = _script("--registry", "r.io/x", "--dry-run", "--only", "mlflow")
    assert re.search(r"r\.io/x/effdet-mlflow:0\.1\.0(-[0-9a-f]+)?\s", default_tag.stdout)
    for args, message in ((["--dry-run"], "no registry"),
                          (["--registry", "r.io/x", "--tag", "latest", "--dry-run"], "latest"),
                          (["--registry", "r.io/x", "--only", "gpu", "--dry-run"], "unknown image"),
                          (["--registry", "R.IO/X", "--dry-run"], "not a valid"),
                          (["--registry", "r.io/x", "--bogus"], "unknown argument")):
        run = _script(*args)
        assert run.returncode == 2 and message in run.stderr, (args, run.stderr)


# -- the pinned installs resolve (PyPI, no engine) -----------------------------------------------

def _project_requirements(extras: set[str]) -> list[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in sorted(extras):
        reqs += project["optional-dependencies"][extra]
    return reqs


def _requirements_of(df: Dockerfile, args: list[str]) -> list[str]:
    """What one `pip install` of a Dockerfile asks for: the project (with its extras) expanded
    from pyproject.toml, `-r` files read from the repository, plain requirements as they are."""
    mapping = copy_sources(df)
    reqs, skip = [], False
    for i, arg in enumerate(args):
        if skip:
            skip = False
            continue
        if arg in ("-c", "--constraint", "-r", "--requirement"):
            skip = True
            if arg in ("-r", "--requirement"):
                text = (REPO / mapping[args[i + 1]]).read_text()
                reqs += [ln.split("#")[0].strip() for ln in text.splitlines()
                         if ln.split("#")[0].strip()]
            continue
        if arg.startswith("-"):
            continue
        match = re.search(r"/src\[([\w,]+)\]$", arg)
        if match:
            reqs += _project_requirements(set(match.group(1).split(",")))
        else:
            reqs.append(arg)
    return reqs


# Pinned dependencies published only as source distributions: resolving for another Python or
# platform needs wheels only, so these (pure Python) are built once into a local wheel directory.
SDIST_ONLY = ("kfp-server-api",)


def _build_sdist_only_wheels(wheel_dir: Path) -> None:
    pins = _constraint_pins()
    specs = [f"{name}=={pins[name]}" for name in SDIST_ONLY]
    run = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                          "-w", str(wheel_dir), *specs], capture_output=True, text=True,
                         timeout=600, check=False)
    assert run.returncode == 0, run.stderr[-2000:]


def _resolve(python: str, requirements: list[str], tmp: Path, wheel_dir: Path) -> dict[str, str]:
    req_file = tmp / "requirements.txt"
    req_file.write_text("\n".join(requirements) + "\n")
    report = tmp / "report.json"
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
           "--report", str(report), "--python-version", python, "--implementation", "cp",
           "--only-binary=:all:", "--platform", "manylinux_2_28_x86_64",
           "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64",
           "--find-links", str(wheel_dir),
           "-c", str(REPO / "constraints.txt"), "-r", str(req_file)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    assert run.returncode == 0, f"python {python}: {requirements}\n{run.stderr[-3000:]}"
    data = json.loads(report.read_text())
    return {item["metadata"]["name"].lower().replace("_", "-"): item["metadata"]["version"]
            for item in data["install"]}


def _constraint_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


@pytest.fixture(scope="module")
def resolutions(tmp_path_factory):
    """Every pip install of every Dockerfile, resolved in parallel (network-bound)."""
    jobs = []
    for name, path in DOCKERFILES.items():
        df = Dockerfile.load(path)
        for index, args in enumerate(_pip_targets(df)):
            jobs.append((name, index, _requirements_of(df, args)))
    wheel_dir = tmp_path_factory.mktemp("sdist-wheels")
    _build_sdist_only_wheels(wheel_dir)
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        futures = {(name, index): pool.submit(_resolve, PYTHON[name], reqs,
                                              tmp_path_factory.mktemp(f"{name}{index}"),
                                              wheel_dir)
                   for name, index, reqs in jobs}
        return {key: future.result() for key, future in futures.items()}


@pytest.mark.slow
def test_each_image_install_resolves_with_the_pinned_constraints(resolutions):
    pins = _constraint_pins()
    assert set(resolutions) == {("train", 0), ("train", 1), ("cpu", 0), ("cpu", 1), ("mlflow", 0)}
    for key, resolved in resolutions.items():
        for package, version in resolved.items():
            if package in pins:
                assert version == pins[package], f"{key}: {package} {version} != {pins[package]}"
    train_first = resolutions[("train", 0)]
    assert not {"tensorflow", "tensorflow-cpu", "horovod"} & set(train_first), \
        "the training image must keep NGC's TensorFlow and Horovod"
    assert train_first["keras"] == pins["keras"]
    assert resolutions[("cpu", 0)]["tensorflow-cpu"] == pins["tensorflow-cpu"]
    # why two passes: TensorFlow 2.17 holds protobuf < 5, kfp 2.17 needs protobuf 6
    assert int(resolutions[("cpu", 0)]["protobuf"].split(".")[0]) < 5
    assert int(resolutions[("cpu", 1)]["protobuf"].split(".")[0]) >= 6
    assert resolutions[("cpu", 1)]["kfp"] == pins["kfp"]
    assert resolutions[("train", 1)]["mlflow"] == pins["mlflow"]
    assert resolutions[("mlflow", 0)]["mlflow"] == pins["mlflow"]
    assert "psycopg2-binary" in resolutions[("mlflow", 0)]
