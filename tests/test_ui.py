"""The UI command's server: the Dagster webserver on 127.0.0.1 serves kura's asset graph, telemetry off."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import CHROMIUM, CHROMIUM_ARGS, ROOT, free_port, stop_process_group, wait_for_port


@pytest.mark.slow
def test_webserver_serves_the_asset_graph_on_loopback(tmp_path):
    from pipelines.cli import prepare_env

    env_before = dict(os.environ)
    try:
        prepare_env(tmp_path / "home")
        env = dict(os.environ)
    finally:
        os.environ.clear()
        os.environ.update(env_before)
    dh = Path(env["DAGSTER_HOME"])
    assert "enabled: false" in (dh / "dagster.yaml").read_text()
    port = free_port()
    proc = subprocess.Popen([str(Path(sys.executable).parent / "dagster-webserver"), "-m", "pipelines.definitions",
                             "-h", "127.0.0.1", "-p", str(port)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for_port(port, 120, proc)
        query = json.dumps({"query": "{ assetNodes { assetKey { path } dependencyKeys { path } } }"}).encode()
        deadline = time.monotonic() + 60
        while True:
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=query,
                                             headers={"Content-Type": "application/json"})
                nodes = json.loads(urllib.request.urlopen(req, timeout=30).read())["data"]["assetNodes"]
                break
            except Exception:  # noqa: BLE001 - the code location may still be loading
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        graph = {"/".join(n["assetKey"]["path"]): {"/".join(d["path"]) for d in n["dependencyKeys"]} for n in nodes}
        assert graph["packed_dataset/web"] == {"data_mix/web", "tokenizer"}
        assert graph["data_mix/instruct"] == {"data_mix/web", "deduplicated", "synthetic/qa", "human/ja_instruct",
                                          "tokenizer"}
        assert graph["eval_perplexity/moe_1"] == {"hf_model/moe_1", "packed_dataset/web", "packed_dataset/instruct"}
        assert graph["checkpoint/moe_1"] == {"upcycled/moe_1", "packed_dataset/web", "tokenizer"}
        assert graph["upcycled/moe_1"] == {"checkpoint/dense_2"}
        assert graph["checkpoint/dense_2"] == {"checkpoint/dense_1", "packed_dataset/instruct", "tokenizer"}
        assert graph["contamination/dense_1"] == {"checkpoint/dense_1", "data_mix/web", "data_mix/instruct"}
        assert graph["eval_judge/moe_1"] == {"hf_model/moe_1", "teacher/demo", "resource/judge"}
        assert graph["adapter"] >= {"synthetic/qa", "data_mix/web", "hf_model/dense_2", "preference_pairs"}
        assert graph["synthetic/qa"] == {"deduplicated", "teacher/demo", "resource/generator"}, "the teacher observed"
        assert len(graph) == 50 and graph["frozen/packed_dataset_web"] == set(), "frozen sources from dvc.yaml"
        assert graph["deduplicated"] == {"cleaned", "corpus_snapshot"}, "staleness through the big fan-in"
        assert graph["data_mix/web"] == {"deduplicated", "synthetic/qa", "tokenizer", "quality_classifier",
                                         "reference_lm"}
        # with telemetry on, Dagster creates $DAGSTER_HOME/.telemetry/id.yaml at start-up (checked by hand)
        assert not (dh / ".telemetry").exists(), "telemetry is off"
        assert_page_shows_lineage(f"http://127.0.0.1:{port}", "packed_dataset/web",
                                  ["data_mix/web", "tokenizer", "checkpoint/dense_1", "trial_eval"],
                                  tmp_path / "ui.png")
    finally:
        stop_process_group(proc)


def assert_page_shows_lineage(base: str, asset: str, linked: list[str], screenshot: Path) -> None:
    """A real browser (Debian's chromium driven by Playwright; `make test` installs it through
    scripts/system-deps.sh, never a browser download) opens an asset's page and sees its lineage links."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{base}/assets/{asset}", wait_until="domcontentloaded", timeout=60_000)
            skip = page.get_by_role("button", name="Skip")  # the "Join the Dagster community" dialog
            try:
                skip.click(timeout=10_000)
            except Exception:  # noqa: BLE001 - the dialog is not shown once dismissed
                pass
            page.get_by_text("Upstream assets", exact=True).wait_for(timeout=60_000)
            for name in linked:  # Dagster shows a key's parts joined by " / "
                page.get_by_text(name.replace("/", " / "), exact=True).first.wait_for(timeout=30_000)
            page.screenshot(path=str(screenshot))
        finally:
            browser.close()
