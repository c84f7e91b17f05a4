"""Every example workflow as a user meets it: the real front end (comfyui-frontend-package, served by the test bed's
ComfyUI) in headless Chromium driven by Playwright. One browser and one ComfyUI with Steer serve all tests; a second
ComfyUI without Steer gives the baseline of the front end's own console noise.

For each example: its card (title, thumbnail) is in the Templates pane under the pack's folder name; clicking it
loads the graph with no console error the baseline lacks; the Steer nodes show their widgets; Fit View at 1600×1000
zooms to ≥ 60 % (the front end draws no text below); after the test bed's swap (tiny models, 64², ≤ 8 steps, done
on the widgets in the page) Run finishes and both images (plain CFG and Steer) appear in their nodes; a training
example (no image) finishes without error and saves its LoRA.
Screenshots: tests/results/browser/<example>-{loaded,done}.png.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from guiders.schedule import ScaleSchedule
from guiders.skip import CFGSkip
from testbed.comfy import BASE, ROOT
from testbed.examples import EXAMPLES, Example, cannot_load_here, write_dataset
from testbed.server import ComfyServer
from testbed.swap import TESTBED_BLOCKS, TESTBED_STEPS, TESTBED_VALUES
from testbed.thumbnails import discrete_sigmas, percent_to_sigma, schedule
from testbed.workflow import input_specs, is_widget

playwright = pytest.importorskip("playwright.sync_api", reason="scripts/setup.sh installs playwright")

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
WINDOW = {"width": 1600, "height": 1000}
RESULTS = ROOT / "tests" / "results" / "browser"
READABLE_ZOOM = 0.6
RUN_TIMEOUT_MS = 300_000  # a guard against a hung run, never a speed requirement
# The machines this runs on reach no network: the front end's calls to its vendor's registry (one per custom node
# type when a workflow loads) are blocked, and so is the size lookup of the Missing Models dialog for each download
# URL in a loader's `models` (what offers users the checkpoint). They are the front end's own requests.
OFFLINE = re.compile(r"api\.comfy\.org|huggingface\.co|Error fetching file size: TypeError: Failed to fetch|"
                     r"ERR_NAME_NOT_RESOLVED|ERR_INTERNET_DISCONNECTED|ERR_CONNECTION_REFUSED")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    assert CHROMIUM.exists(), "scripts/setup.sh installs Debian's chromium at /usr/bin/chromium"
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


def _fresh_server(tmp: Path, base: Path) -> ComfyServer:
    """A server on `base` with its own user directory, whose user has seen the first-run tutorial: a fresh user's
    first page opens the Templates pane by itself (1.32 and 1.49, the latter over an overlay that takes clicks, a few
    seconds after the page is ready), a later page does not; with it seen, every page is a later one."""
    settings = tmp / "user" / "default" / "comfy.settings.json"
    settings.parent.mkdir(parents=True)
    settings.write_text(json.dumps({"Comfy.TutorialCompleted": True}))
    return ComfyServer(tmp / "output", base=base, extra_args=("--user-directory", str(tmp / "user")))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComfyServer]:
    write_dataset(BASE / "input")  # the training example's image folder
    with _fresh_server(tmp_path_factory.mktemp("steer"), BASE) as server:
        yield server


@pytest.fixture(scope="module")
def pack() -> str:
    (name,) = (path.name for path in (BASE / "custom_nodes").iterdir() if path.resolve() == ROOT)
    return name


@pytest.fixture(scope="module")
def object_info(server: ComfyServer) -> dict[str, Any]:
    return server.object_info()


def console_key(message: Any) -> str:
    """A console message without what changes between servers (ports, line:column)."""
    where = re.sub(r"https?://[^/]+", "", message.location.get("url", "") or "")
    text = re.sub(r"https?://127\.0\.0\.1:\d+", "", message.text.splitlines()[0] if message.text else "")
    return re.sub(r":\d+:\d+", "", f"{message.type}: {text} @ {where}")


class Page:
    """A fresh browser page on a server, recording console errors and warnings."""

    def __init__(self, browser: Any, server: ComfyServer) -> None:
        self.context = browser.new_context(viewport=WINDOW)
        self.page = self.context.new_page()
        self.console: list[str] = []
        self.page.on("console", lambda m: m.type in ("error", "warning") and self.console.append(console_key(m)))
        self.page.on("pageerror", lambda error: self.console.append(f"pageerror: {error}"))
        self.page.goto(server.url)
        self.page.wait_for_function("window.app && window.app.graph && app.canvas", timeout=120_000)

    def open_templates(self) -> None:
        """The Templates pane, opened with its button as a returning user does."""
        self.page.get_by_role("button", name="Templates", exact=True).click()
        self.page.get_by_role("dialog").filter(has_text="All Templates").wait_for()
        self.page.wait_for_load_state("networkidle")

    def close(self) -> None:
        self.context.close()


@pytest.fixture(scope="module")
def baseline(browser: Any, tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Console errors and warnings of the same front end with no custom nodes, Templates pane opened."""
    tmp = tmp_path_factory.mktemp("baseline")
    base = tmp / "base"
    (base / "custom_nodes").mkdir(parents=True)
    with _fresh_server(tmp, base) as bare:
        page = Page(browser, bare)
        page.open_templates()
        page.page.wait_for_timeout(1000)
        noise = set(page.console)
        page.close()
    return noise


@pytest.fixture(scope="module")
def results() -> Path:
    shutil.rmtree(RESULTS, ignore_errors=True)
    RESULTS.mkdir(parents=True)
    return RESULTS


def new_errors(console: list[str], baseline: set[str]) -> list[str]:
    return [line for line in console if line not in baseline and not OFFLINE.search(line)]


def widget_names(info: dict[str, Any]) -> set[str]:
    return {name for name, spec, _ in input_specs(info) if is_widget(spec)}


SWAP_JS = """([values, blocksByCheckpoint]) => {
  const checkpoints = app.graph.nodes.flatMap(n => (n.widgets ?? []).filter(w => w.name === "ckpt_name"))
    .map(w => w.value);
  const blocks = checkpoints.map(name => blocksByCheckpoint[name]).find(b => b !== undefined);
  for (const node of app.graph.nodes) for (const widget of node.widgets ?? []) {
    const rule = widget.name === "blocks" && blocks !== undefined ? blocks : values[widget.name];
    if (rule === undefined) continue;
    const value = typeof rule === "object" ? (rule[widget.value] ?? widget.value)
      : typeof rule === "string" ? rule : Math.min(widget.value, rule);
    widget.value = value;
    widget.callback?.(value);
  }
}"""
SWAP = [TESTBED_VALUES, TESTBED_BLOCKS]  # testbed/swap.py's rules, applied to the widgets in the page

IMAGES_JS = """() => app.graph.nodes.filter(n => n.type === "SaveImage" || n.type === "PreviewImage")
  .map(n => ({type: n.type, loaded: (n.imgs ?? []).filter(i => i.complete && i.naturalWidth > 0).length}))"""


def test_baseline_load_is_not_silent(baseline: set[str]) -> None:
    """The baseline really records console output (the front end's own 404s), so comparing with it means
    something."""
    assert baseline


@pytest.mark.parametrize("key", list(EXAMPLES))
def test_example_in_the_browser(browser: Any, server: ComfyServer, baseline: set[str], object_info: dict[str, Any],
                                pack: str, results: Path, key: str) -> None:
    if reason := cannot_load_here(key, object_info):
        pytest.skip(reason)
    example: Example = EXAMPLES[key]
    workflow = json.loads(example.path.read_text())
    page = Page(browser, server)
    try:
        p = page.page
        page.open_templates()
        p.get_by_text(pack, exact=True).first.click()
        card = p.get_by_text(example.title, exact=True)
        card.wait_for()
        card.scroll_into_view_if_needed()
        thumbnail = card.locator("xpath=ancestor::*[.//img][1]//img").first
        p.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=thumbnail.element_handle(),
                            timeout=30_000)  # the card's <name>.jpg
        card.click()
        p.wait_for_function(f"app.graph.nodes.length === {len(workflow['nodes'])}", timeout=30_000)
        # The test bed has no real checkpoint: the front end says which file is missing. 1.32 offers the download
        # named in the loader's `models` in a dialog; 1.49 (ComfyUI 0.33) says so in a notice, its details in a panel.
        missing = p.get_by_role("dialog").filter(has_text="Missing Models")
        notice = p.get_by_text(f"{example.family.checkpoint} is missing", exact=True)
        missing.or_(notice).first.wait_for()
        if missing.count():
            assert f"checkpoints / {example.family.checkpoint}" in missing.inner_text()
            assert missing.get_by_role("button", name=re.compile("Download")).count() == 1
            p.keyboard.press("Escape")
            missing.wait_for(state="detached")

        for node in p.evaluate("""() => app.graph.nodes.filter(n => n.comfyClass?.startsWith("Steer"))
                                  .map(n => ({type: n.comfyClass, widgets: (n.widgets ?? []).map(w => w.name),
                                              size: n.size}))"""):
            assert widget_names(object_info[node["type"]]) <= set(node["widgets"]), node
            assert node["size"][0] > 0 and node["size"][1] > 0, node

        p.get_by_role("button", name="Fit View (.)").click()
        p.wait_for_timeout(300)
        zoom = p.evaluate("app.canvas.ds.scale")
        p.screenshot(path=results / f"{key}-loaded.png")
        (results / f"{key}-zoom.txt").write_text(f"{zoom:.3f}\n")
        assert zoom >= READABLE_ZOOM, f"Fit View zooms to {zoom:.2f} in a 1600×1000 window"

        p.evaluate(SWAP_JS, SWAP)
        p.evaluate("""() => { window.__steerErrors = []; window.__steerDone = false;
            app.api.addEventListener("execution_error", e => window.__steerErrors.push(e.detail));
            app.api.addEventListener("execution_success", () => { window.__steerDone = true; }); }""")
        loras = server.output_dir / "loras"
        before = set(loras.glob(f"{key}_*.safetensors"))
        p.get_by_role("button", name="Run", exact=True).first.click()  # 1.49 also names its queue-mode menu "Run"
        done = "window.__steerDone" if example.training else f"({IMAGES_JS})().every(n => n.loaded > 0)"
        p.wait_for_function(f"() => window.__steerErrors.length || {done}", timeout=RUN_TIMEOUT_MS)
        errors = p.evaluate("window.__steerErrors")
        assert not errors, errors
        images = p.evaluate(IMAGES_JS)
        if example.training:  # it saves a LoRA, no image
            assert images == [] and len(set(loras.glob(f"{key}_*.safetensors")) - before) == 1
        else:  # a sweep compares in its grid
            expected = ["PreviewImage", "SaveImage"] if example.compare else ["SaveImage"]
            assert sorted(n["type"] for n in images) == expected, images
        p.screenshot(path=results / f"{key}-done.png")
        assert not new_errors(page.console, baseline), new_errors(page.console, baseline)
    finally:
        page.close()


# --- js/steer.js: nodes that explain themselves (driven through the page's own objects, no clicks) ---

@pytest.fixture(scope="module")
def graph_page(browser: Any, server: ComfyServer) -> Iterator[Any]:
    """One page for the tests below; each loads the graph it needs with app.loadGraphData."""
    page = Page(browser, server)
    yield page
    assert not [line for line in page.console if "steer" in line.lower() and not OFFLINE.search(line)], page.console
    page.close()


def load(page: Any, key: str, swap: bool = True) -> None:
    """An example's UI file in the editor, on the test bed's models unless `swap` is False; previews settled."""
    page.evaluate("workflow => app.loadGraphData(workflow)", json.loads(EXAMPLES[key].path.read_text()))
    if swap:
        page.evaluate(SWAP_JS, SWAP)
    settle(page)


def settle(page: Any) -> None:
    """Redraw until every Steer preview has answered for the current widget values."""
    page.wait_for_function("""() => app.graph.nodes.flatMap(n => n.widgets ?? [])
        .filter(w => w.name === "steer_preview").every(w => w.sync())""", timeout=30_000, polling=200)


def steer_node(page: Any, class_type: str, expression: str) -> Any:
    return page.evaluate(f"""() => {{ const node = app.graph.nodes.find(n => n.comfyClass === "{class_type}");
        const w = name => node.widgets.find(w => w.name === name); return {expression}; }}""")


def set_widget(page: Any, class_type: str, name: str, value: Any) -> None:
    page.evaluate("""([type, name, value]) => {
        const node = app.graph.nodes.find(n => n.comfyClass === type || n.type === type);
        const w = node.widgets.find(w => w.name === name); w.value = value; w.callback?.(value); }""",
                  [class_type, name, value])
    settle(page)


def test_extension_is_loaded_once(graph_page: Any, server: ComfyServer) -> None:
    """WEB_DIRECTORY only (no [tool.comfy] web): /extensions lists steer.js once and it registers once."""
    status, extensions = server.get("/extensions")
    assert status == 200 and len([path for path in extensions if path.endswith("/steer.js")]) == 1, extensions
    assert graph_page.page.evaluate("app.extensions.filter(e => e.name === 'steer.nodes').length") == 1
    assert "web" not in (ROOT / "pyproject.toml").read_text().split("[tool.comfy]")[1].split("\n[")[0]


OVERLAPS_JS = """() => { const rects = app.graph.nodes.map(n => [n.title, [...n.boundingRect]]);
    return rects.flatMap(([a, r], i) => rects.slice(i + 1).filter(([, q]) => r[0] < q[0] + q[2] &&
      q[0] < r[0] + r[2] && r[1] < q[1] + q[3] && q[1] < r[1] + r[3]).map(([b]) => [a, b])); }"""


@pytest.mark.parametrize("key", list(EXAMPLES))
def test_no_node_is_drawn_over_another(graph_page: Any, object_info: dict[str, Any], key: str) -> None:
    """With what js/steer.js adds (previews, presets) and hides, the example's nodes still do not overlap."""
    if reason := cannot_load_here(key, object_info):
        pytest.skip(reason)
    load(graph_page.page, key, swap=False)
    assert not graph_page.page.evaluate(OVERLAPS_JS)


def test_unused_widgets_hidden_and_still_saved(graph_page: Any) -> None:
    """SteerCFGSkip in sigma mode hides the percent and adaptive inputs; switching to percent swaps them; the
    hidden values stay in the saved workflow, in their places."""
    p = graph_page.page
    load(p, "steer_cfg_skip")
    hidden = "node.widgets.filter(w => w.hidden).map(w => w.name)"
    assert sorted(steer_node(p, "SteerCFGSkip", hidden)) == ["end_percent", "start_percent", "threshold"]
    saved = steer_node(p, "SteerCFGSkip", "node.serialize().widgets_values")
    assert saved == ["sigma", 0.4, 1, 5.42, 0.28, 0.99]
    set_widget(p, "SteerCFGSkip", "mode", "percent")
    assert sorted(steer_node(p, "SteerCFGSkip", hidden)) == ["sigma_high", "sigma_low", "threshold"]
    assert steer_node(p, "SteerCFGSkip", "node.serialize().widgets_values") == ["percent", *saved[1:]]
    set_widget(p, "SteerCFGSkip", "mode", "adaptive")
    assert sorted(steer_node(p, "SteerCFGSkip", hidden)) == ["end_percent", "sigma_high", "sigma_low",
                                                                   "start_percent"]


def test_custom_text_ignored_by_the_curve_is_flagged(graph_page: Any) -> None:
    p = graph_page.page
    load(p, "steer_scale_schedule")
    assert steer_node(p, "SteerScaleSchedule", "w('custom').hidden") is True
    set_widget(p, "SteerScaleSchedule", "custom", "12, 8, 5")
    assert steer_node(p, "SteerScaleSchedule", "[w('custom').hidden, w('custom').label]")[0] is False
    assert "ignored" in steer_node(p, "SteerScaleSchedule", "w('custom').label")
    assert any("custom is ignored" in note for note in steer_node(p, "SteerScaleSchedule", "node.steerNotes"))
    set_widget(p, "SteerScaleSchedule", "curve", "custom")
    assert steer_node(p, "SteerScaleSchedule", "[w('custom').hidden, w('custom').label ?? null]") == [False, None]
    assert steer_node(p, "SteerScaleSchedule", "node.steerPreview.scales.map(s => s[1])") == [12, 8, 5, 5, 5, 5, 5, 5]


def test_schedule_curve_follows_its_widgets_and_the_sampler(graph_page: Any) -> None:
    """The drawn schedule is the node's own math (guiders/schedule.py) at the connected guider's cfg, one point per
    step of the connected BasicScheduler, and follows edits of either node."""
    p = graph_page.page
    load(p, "steer_scale_schedule")
    expected = [ScaleSchedule("linear_down", 4.0).scale(12.0, i, TESTBED_STEPS) for i in range(TESTBED_STEPS)]
    scales = steer_node(p, "SteerScaleSchedule", "node.steerPreview.scales.map(s => s[1])")
    assert scales == pytest.approx(expected) and steer_node(p, "SteerScaleSchedule", "node.steerPreview.per_step")
    set_widget(p, "SteerScaleSchedule", "cfg_min", 2.0)
    assert steer_node(p, "SteerScaleSchedule", "node.steerPreview.scales.at(-1)[1]") == 2.0
    set_widget(p, "BasicScheduler", "steps", 5)
    assert len(steer_node(p, "SteerScaleSchedule", "node.steerPreview.scales")) == 5
    set_widget(p, "SteerGuider", "cfg", 9.0)
    assert steer_node(p, "SteerScaleSchedule", "node.steerPreview.scales[0][1]") == 9.0


def test_skip_and_pag_show_the_steps_they_act_on(graph_page: Any) -> None:
    """CFG skip by step share; PAG (end_percent 0.7) on the steps whose sigma is at least ComfyUI's
    percent_to_sigma(0.7), the convention of core's SkipLayerGuidanceDiT and ControlNet."""
    p = graph_page.page
    load(p, "steer_pag_cfg_skip")
    guided = [CFGSkip("percent", 0.3, 1.0).guides_step(i, TESTBED_STEPS, 0.0) for i in range(TESTBED_STEPS)]
    assert steer_node(p, "SteerCFGSkip", "node.steerPreview.active") == guided
    preview = steer_node(p, "SteerPAG", "node.steerPreview")
    assert preview["sigmas"] == pytest.approx(discrete_sigmas(TESTBED_STEPS), rel=1e-4)
    perturbed = [sigma >= percent_to_sigma(0.7) for sigma in discrete_sigmas(TESTBED_STEPS)]
    assert preview["active"] == perturbed and 0 < sum(perturbed) < TESTBED_STEPS
    load(p, "steer_cfg_skip")  # sigma mode on the test bed's SD1.5 model: the sigmas of its normal schedule
    preview = steer_node(p, "SteerCFGSkip", "node.steerPreview")
    assert preview["active"] == [0.28 < sigma <= 5.42 for sigma in preview["sigmas"]]
    assert preview["sigmas"][0] == pytest.approx(14.61, abs=0.01) and any(preview["active"])
    assert any("SDXL" in note for note in steer_node(p, "SteerCFGSkip", "node.steerNotes"))


PRESETS_JS = "w('preset').options.values"


def test_pag_presets_and_the_model_blocks(graph_page: Any, server: ComfyServer) -> None:
    """The presets are "auto" then each family's default (GET /steer/presets); choosing one fills `blocks`; on the
    test bed's SD1.5 file "auto" is shown to mean middle.0, the file's blocks are listed (read from its header), and
    a preset for another family is flagged with the node's own refusal before anything runs."""
    p = graph_page.page
    load(p, "steer_pag")
    status, presets = server.get("/steer/presets")
    assert status == 200
    assert steer_node(p, "SteerPAG", PRESETS_JS) == ["preset…", *(label for label, _ in presets["SteerPAG"])]
    notes = steer_node(p, "SteerPAG", "node.steerNotes")
    assert "auto = middle.0 (SD1.5 default)" in notes, notes
    assert any(note.startswith("SD1.5 blocks:") and "middle.0" in note for note in notes), notes
    sd3 = next(label for label, blocks in presets["SteerPAG"] if label.startswith("SD3"))
    set_widget(p, "SteerPAG", "preset", sd3)
    assert steer_node(p, "SteerPAG", "[w('blocks').value, w('preset').value]") == ["double.1", "preset…"]
    notes = steer_node(p, "SteerPAG", "node.steerNotes")
    assert notes[0] == "⚠ double.1 not in this UNet model; it has input.1, middle.0, output.0, output.1", notes
    set_widget(p, "SteerPAG", "preset", presets["SteerPAG"][0][0])
    assert steer_node(p, "SteerPAG", "w('blocks').value") == "auto"
    assert not any(note.startswith("⚠") for note in steer_node(p, "SteerPAG", "node.steerNotes"))
    assert steer_node(p, "SteerPAG", "node.serialize().widgets_values") == [3, "auto", 0, 1, -1, -1, 0, 0]


def test_seg_and_skip_layer_show_their_steps_blocks_and_presets(graph_page: Any, server: ComfyServer) -> None:
    """SteerSEG (SDXL example, on the tiny SD1.5) acts on every step of its 0–1 window; SteerSkipLayer (SD3.5 Medium
    example, on the tiny SD3 file) on the flow steps inside ComfyUI's percent window 1 %–15 %, with the file's one
    block listed; `auto` there stands for SD3's double.7-9, which the tiny file lacks: flagged, as the node would
    refuse it. Skip-layer offers no UNet preset."""
    p = graph_page.page
    status, presets = server.get("/steer/presets")
    load(p, "steer_seg")
    assert steer_node(p, "SteerSEG", PRESETS_JS) == ["preset…", *(label for label, _ in presets["SteerSEG"])]
    assert steer_node(p, "SteerSEG", "node.steerPreview.active") == [True] * TESTBED_STEPS
    assert "auto = middle.0 (SD1.5 default)" in steer_node(p, "SteerSEG", "node.steerNotes")

    load(p, "steer_skip_layer")
    labels = steer_node(p, "SteerSkipLayer", PRESETS_JS)
    assert labels == ["preset…", *(label for label, _ in presets["SteerSkipLayer"])]
    assert not any("UNet" in label for label in labels)
    high, low = percent_to_sigma(0.01, flow=True), percent_to_sigma(0.15, flow=True)
    expected = [low <= sigma <= high for sigma, _ in schedule(TESTBED_STEPS, flow=True)]
    preview = steer_node(p, "SteerSkipLayer", "node.steerPreview")
    assert preview["active"] == expected and any(expected) and preview["flow"]
    assert preview["sigmas"] == pytest.approx([sigma for sigma, _ in schedule(TESTBED_STEPS, flow=True)], rel=1e-4)
    assert steer_node(p, "SteerSkipLayer", "[w('blocks').value, node.steerNotes]") == [
        "double.0", ["SD3 blocks: double.0"]]
    set_widget(p, "SteerSkipLayer", "blocks", "auto")
    notes = steer_node(p, "SteerSkipLayer", "node.steerNotes")
    assert notes[0].startswith("⚠ double.7, double.8, double.9 not in this SD3 MMDiT model"), notes
    assert "auto = double.7, double.8, double.9 (SD3 default)" in notes


@pytest.mark.parametrize(("folder", "name", "family", "block"), [
    ("checkpoints", "steer_tiny_sd15.safetensors", "SD1.5", "middle.0"),
    ("checkpoints", "steer_tiny_sd3.safetensors", "SD3", "double.0"),
    ("diffusion_models", "steer_tiny_wan21.safetensors", "Wan", "double.0")])
def test_model_info_route_reads_the_header(server: ComfyServer, folder: str, name: str, family: str,
                                           block: str) -> None:
    status, info = server.get(f"/steer/model_info?folder={folder}&name={name}")
    assert status == 200 and info["found"] and info["family"] == family and block in info["blocks"], info
    assert info["flow"] == (family != "SD1.5")


def test_model_info_route_refuses_what_it_should_not_read(server: ComfyServer) -> None:
    for query in ("folder=checkpoints&name=missing.safetensors", "folder=..&name=steer_tiny_sd15.safetensors",
                  "folder=checkpoints&name=../checkpoints/steer_tiny_sd15.safetensors"):
        status, info = server.get(f"/steer/model_info?{query}")
        assert status == 200 and info == {"family": "unknown", "flow": False, "architecture": None, "blocks": [],
                                          "found": False}, query
