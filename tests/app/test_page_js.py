"""The page's front end outside the browser: node's test runner on the viewer's and the review keys' logic
(tests/app/js/), and the scripts gradio runs (logic file + glue file, as one `js_on_load` function body) compile.
`.ci/run` installs node where it is missing: in CI a missing node fails these tests; elsewhere it skips them."""

import os
import shutil
import subprocess

import pytest

from conftest import REPO_ROOT
from modeling_cliptt5.app.study_viewer import VIEWER_JS
from modeling_cliptt5.app.page_layout import REVIEW_KEYS_JS

NODE = shutil.which("node")
IN_CI = os.environ.get("CI") == "true"
pytestmark = pytest.mark.skipif(NODE is None and not IN_CI, reason="node is not installed (.ci/run installs it)")

# How gradio runs js_on_load: Function(<these parameters>, body)(...). Compiling the body finds a syntax error or a
# name declared both in a logic file and in its glue, without a page.
COMPILE = ("new Function('element', 'trigger', 'props', 'server', 'upload', 'watch', "
           "require('fs').readFileSync(0, 'utf8'))")


def test_the_front_end_logic_passes_its_node_tests():
    assert NODE, "node is not installed: .ci/run installs it (apt package nodejs)"
    finished = subprocess.run([NODE, "--test", "tests/app/js/"], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=120)
    assert finished.returncode == 0, finished.stdout[-6000:] + finished.stderr[-3000:]
    assert "# pass " in finished.stdout and "# fail 0" in finished.stdout, finished.stdout[-3000:]


@pytest.mark.parametrize("name, script", [("viewer", VIEWER_JS), ("review keys", REVIEW_KEYS_JS)])
def test_the_scripts_given_to_gradio_compile_as_one_function_body(name, script):
    assert NODE, "node is not installed: .ci/run installs it (apt package nodejs)"
    finished = subprocess.run([NODE, "-e", COMPILE], input=script, capture_output=True, text=True, timeout=60)
    assert finished.returncode == 0, (name, finished.stderr[-3000:])
