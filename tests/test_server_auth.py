"""The team server's authorisation rule (convvae.tracking.server_auth), inside Flask's request
context as MLflow runs it, with MLflow's own login check replaced by a known user: aliases and
the tags of existing model versions are the promoting identity's alone."""

from types import SimpleNamespace

import pytest
from flask import Flask, Response

from convvae.tracking import server_auth

API = "/api/2.0/mlflow"
CASES = [
    ("POST", f"{API}/registered-models/alias", "set or delete aliases"),
    ("DELETE", "/ajax-api/2.0/mlflow/registered-models/alias", "set or delete aliases"),
    ("POST", f"{API}/model-versions/set-tag", "tag an existing model version"),
    ("DELETE", f"{API}/model-versions/delete-tag", "untag a model version"),
]
# What the training identity does and must keep doing.
ALLOWED = [
    ("POST", f"{API}/model-versions/create"),
    ("PATCH", f"{API}/model-versions/update"),
    ("POST", f"{API}/registered-models/set-tag"),
    ("GET", f"{API}/registered-models/alias"),
]


def answer(monkeypatch, user: str, method: str, path: str):
    monkeypatch.setenv(server_auth.PROMOTERS_VARIABLE, "promoter, release-bot")
    found = SimpleNamespace(username=user)
    monkeypatch.setattr(server_auth, "authenticate_request_basic_auth", lambda: found)
    with Flask(__name__).test_request_context(path, method=method, json={}):
        return server_auth.authenticate_request(), found


@pytest.mark.parametrize(("method", "path", "action"), CASES)
def test_only_promoters_move_aliases_or_retag_versions(monkeypatch, method, path, action):
    refused, _ = answer(monkeypatch, "pipeline", method, path)
    assert isinstance(refused, Response) and refused.status_code == 403
    said = refused.get_data(as_text=True)
    assert said.startswith(f"user 'pipeline' may not {action}: only the promoting identity")
    assert "(promoter, release-bot)" in said
    for promoter in ("promoter", "release-bot"):
        allowed, found = answer(monkeypatch, promoter, method, path)
        assert allowed is found


@pytest.mark.parametrize(("method", "path"), ALLOWED)
def test_the_training_identity_keeps_its_own_requests(monkeypatch, method, path):
    allowed, found = answer(monkeypatch, "pipeline", method, path)
    assert allowed is found


def test_a_failed_login_is_mlflows_answer(monkeypatch):
    unauthorised = Response("login", status=401)
    monkeypatch.setattr(server_auth, "authenticate_request_basic_auth", lambda: unauthorised)
    with Flask(__name__).test_request_context(f"{API}/registered-models/alias", method="POST"):
        assert server_auth.authenticate_request() is unauthorised
