"""Symptom files (the shipped ones and bad ones) and the Visual Symptom Generator against a local HTTP server."""
from __future__ import annotations

import json
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pytest
import yaml

from medad.errors import ConfigError, MedadError
from medad.paths import BOOK_DIR
from medad.symptoms import (ABLATION_KINDS, LLMEndpoint, generate_symptoms, load_symptoms, parse_lines,
                            symptom_path)

DATASETS = ("chest_xray", "brain_mri", "derm7pt")


@pytest.mark.parametrize("dataset", DATASETS)
def test_shipped_files_are_complete_and_cited(dataset):
    from medad.data import get_spec

    sym = load_symptoms(dataset)
    assert sym.classes == get_spec(dataset).classes
    assert all(4 <= len(t) <= 8 for t in sym.per_class())
    assert len({s for t in sym.per_class() for s in t}) == sum(map(len, sym.per_class()))  # no text in two classes
    bib = (BOOK_DIR / "references.bib").read_text()
    assert sym.references and all(re.search(r"@\w+\{" + re.escape(k) + ",", bib) for k in sym.references)
    for kind in ABLATION_KINDS:
        replaced = sym.with_replaced(kind)
        target = sym.ablations["class"]
        assert replaced.symptoms[target] == sym.ablations[kind] != sym.symptoms[target]
        assert all(replaced.symptoms[c] == sym.symptoms[c] for c in sym.classes if c != target)


def _write(tmp_path, body: dict):
    path = tmp_path / "x.yml"
    path.write_text(yaml.safe_dump(body))
    return path


def test_bad_files_name_the_file_and_what_was_expected(tmp_path):
    good = yaml.safe_load(symptom_path("chest_xray").read_text())
    extra = {**good, "classes": {**good["classes"], "COVID": {"name": "covid", "symptoms": ["ground glass"]}}}
    with pytest.raises(ConfigError, match=r"x\.yml: class\(es\) COVID not in dataset 'chest_xray'"):
        load_symptoms(_write(tmp_path, extra))
    empty = {**good, "classes": {**good["classes"], "PNEUMONIA": {"name": "pneumonia", "symptoms": []}}}
    with pytest.raises(ConfigError, match=r"x\.yml: class 'PNEUMONIA': expected a non-empty list"):
        load_symptoms(_write(tmp_path, empty))
    missing = {**good, "classes": {"NORMAL": good["classes"]["NORMAL"]}}
    with pytest.raises(ConfigError, match="no symptoms for class"):
        load_symptoms(_write(tmp_path, missing))
    blank = {**good, "classes": {**good["classes"], "NORMAL": {"symptoms": ["ok", "  "]}}}
    with pytest.raises(ConfigError, match="non-empty string"):
        load_symptoms(_write(tmp_path, blank))
    (tmp_path / "broken.yml").write_text("classes: [unclosed")
    with pytest.raises(ConfigError, match="broken.yml: not valid YAML"):
        load_symptoms(tmp_path / "broken.yml")
    with pytest.raises(ConfigError, match="symptom file not found"):
        load_symptoms(tmp_path / "absent.yml")
    with pytest.raises(ConfigError, match="must be one of"):
        load_symptoms("chest_xray").with_replaced("nonsense")


def test_parse_lines():
    assert parse_lines("1. White patch.\n- air bronchogram\n* \"hazy\"\n\nwhite patch") == ["White patch", "air bronchogram", "hazy"]


class _FakeLLM(BaseHTTPRequestHandler):
    """An OpenAI-compatible /chat/completions: a fixed list for text-only questions, a subset for image questions."""

    requests: list = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        content = body["messages"][0]["content"]
        if isinstance(content, str):
            cls = "pneumonia" if "of pneumonia" in content else "normal"
            answer = f"1. {cls} feature one\n2. {cls} feature two\n3. {cls} feature three"
        else:
            assert content[1]["image_url"]["url"].startswith("data:image/png;base64,")
            cls = "pneumonia" if "show pneumonia" in content[0]["text"] else "normal"
            answer = f"- {cls} feature one\n- {cls} feature THREE.\n- something not asked"
        reply = json.dumps({"choices": [{"message": {"role": "assistant", "content": answer}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


@pytest.fixture
def llm_server():
    _FakeLLM.requests = []
    server = HTTPServer(("127.0.0.1", 0), _FakeLLM)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()
    server.server_close()


def test_generator_two_stages_intersected_and_written(tmp_path, llm_server, monkeypatch):
    monkeypatch.setenv("MEDAD_LLM_BASE_URL", llm_server)
    monkeypatch.setenv("MEDAD_LLM_MODEL", "fake-vlm")
    monkeypatch.setenv("MEDAD_LLM_API_KEY", "k123")
    images = {c: [np.full((20, 24), 10 * i, np.uint8) for i in range(16)] for c in ("NORMAL", "PNEUMONIA")}
    out = tmp_path / "gen.yml"
    sym = generate_symptoms("chest_xray", images, out, names={"NORMAL": "normal", "PNEUMONIA": "pneumonia"})
    assert sym.symptoms == {"NORMAL": ["normal feature one", "normal feature three"],
                            "PNEUMONIA": ["pneumonia feature one", "pneumonia feature three"]}
    assert len(_FakeLLM.requests) == 4 and all(r["path"] == "/v1/chat/completions" for r in _FakeLLM.requests)
    assert {r["auth"] for r in _FakeLLM.requests} == {"Bearer k123"} and {r["body"]["model"] for r in _FakeLLM.requests} == {"fake-vlm"}
    written = yaml.safe_load(out.read_text())
    assert written["provenance"]["model"] == "fake-vlm" and "k123" not in out.read_text()
    assert set(written["provenance"]["prompts"]) == {"NORMAL", "PNEUMONIA"}
    assert load_symptoms(out).symptoms == sym.symptoms  # the same format as the written files


def test_generator_needs_endpoint_and_sixteen_images(tmp_path, llm_server, monkeypatch):
    monkeypatch.delenv("MEDAD_LLM_BASE_URL", raising=False)
    with pytest.raises(ConfigError, match="no LLM endpoint configured: set MEDAD_LLM_BASE_URL"):
        generate_symptoms("chest_xray", {}, tmp_path / "g.yml")
    monkeypatch.setenv("MEDAD_LLM_BASE_URL", llm_server)
    monkeypatch.delenv("MEDAD_LLM_MODEL", raising=False)
    with pytest.raises(ConfigError, match="MEDAD_LLM_MODEL"):
        LLMEndpoint.from_env()
    few = {c: [np.zeros((8, 8), np.uint8)] * 3 for c in ("NORMAL", "PNEUMONIA")}
    with pytest.raises(ConfigError, match="needs 16 images"):
        generate_symptoms("chest_xray", few, tmp_path / "g.yml", endpoint=LLMEndpoint(llm_server, "m"))


def test_unreachable_endpoint_is_a_clear_error():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = LLMEndpoint(f"http://127.0.0.1:{port}/v1", "m", timeout=2)
    with pytest.raises(MedadError, match=rf"127\.0\.0\.1:{port}/v1/chat/completions is unreachable"):
        endpoint.chat("hello")
