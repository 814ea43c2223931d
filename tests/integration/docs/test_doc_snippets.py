"""Every Python snippet of the README and of ``docs/`` runs as written, on the packaged mini pair.

The snippets name real checkpoints and GPUs; they run here offline, on a CPU, after this substitution and nothing
else (the rule the README's claims are held to):

1. a Gemma 4 assistant's hub id (``"google/gemma-4-<size>-it-assistant"``) becomes the packaged mini assistant's
   folder, and a Gemma 4 target's hub id (``"google/gemma-4-<size>-it"``) becomes ``"gemma-mtp-mini"``; on a page
   that shows images or audio (the mini pair reads text only), a target's hub id becomes instead the folder of the
   testing kit's multimodal pair (dense, agreeing, images and audio), laid out under Google's naming
   (``<folder>`` and ``<folder>-assistant``), and the page runs in a folder holding the media files it names
   (``chart.png``, ``scan.png``, ``call.wav``);
2. ``device="cuda"`` (or ``"cuda:N"``) becomes ``device="cpu"`` and ``dtype="bfloat16"`` becomes
   ``dtype="float32"`` (the CPU default, so that every snippet shares the one loaded runtime);
3. a token budget above 128 (``max_new_tokens=N``, ``max_tokens=N``) becomes 128, to keep the run short;
4. the folder ``"/tmp/pair"`` becomes a temporary folder of the test.

A page's snippets run in order in one namespace, so a later snippet uses what an earlier one made (``rt``,
``llm``, ``chain``). A few snippets are fragments of an API tour that use a name the page takes as given
(``prompt``, ``messages``, ``questions``, ``index``, ``png_b64``...): :data:`GIVEN` defines those, per page. Top-level ``await``
and ``async for`` run on an event loop.

Statements that need what this environment lacks (``backend="vllm"``: vLLM and a GPU or its CPU build;
``backend="openai"``: a running server and the ``openai`` client) must build their objects or fail with the error
the docs promise for a missing dependency (the install command); where the dependency is installed they are
skipped, as they need an engine or a server this test does not start.

Shell snippets (installation, the ``gemma-mtp`` command) are not run here; the command's behaviour is tested in
``tests/unit/runtime/test_cli.py``.
"""

from __future__ import annotations

import ast
import asyncio
import importlib.util
import re
import shutil
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[3]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MINI_ASSISTANT = str(Path(str(resources.files("gemma_mtp").joinpath("models/mini/assistant"))))

_MEDIA_DATA = (
    "import base64\n"
    'png_b64 = base64.b64encode(open("chart.png", "rb").read()).decode()\n'
    'wav_b64 = base64.b64encode(open("call.wav", "rb").read()).decode()\n'
)
GIVEN: dict[str, str] = {
    "index.md": 'prompt = "Why is the sky blue?"\nmessages = [{"role": "user", "content": "Weather in Paris?"}]\n',
    "langchain.md": 'questions = ["What is speculative decoding?", "What does the assistant draft?"]\n',
    "README.md": _MEDIA_DATA,
    "multimodal.md": _MEDIA_DATA,
    "llama_index.md": (
        "from llama_index.core import Document, MockEmbedding, VectorStoreIndex\n"
        "from llama_index.core.llms import ChatMessage\n"
        'messages = [ChatMessage(role="user", content="Why is the sky blue?")]\n'
        'index = VectorStoreIndex.from_documents([Document(text="Gemma 4 drafts with an MTP assistant.")], '
        "embed_model=MockEmbedding(embed_dim=8))\n"
    ),
}
"""Names a page's fragments take as given, defined before its first snippet."""

ENVIRONMENTS = {
    "vllm": ("vllm", "backend='vllm' needs vLLM"),
    "openai": ("openai", "backend='openai' needs the OpenAI client"),
}
"""What ``backend=...`` needs: the module, and the start of the ImportError the docs promise without it."""


def shows_media(page: Path) -> bool:
    return any(re.search(r"\b(image|audio|ImageBlock|AudioBlock)\b", block) for _, block in snippets(page))


@pytest.fixture(scope="module")
def media_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the kit's multimodal pair under Google's naming, and the media files the pages name."""
    import numpy as np
    import soundfile
    from PIL import Image

    from gemma_mtp.testing import KitMedia, tiny_pair

    folder = tmp_path_factory.mktemp("media-docs")
    pair = tiny_pair("dense", agreeing=True, media=KitMedia())
    shutil.copytree(pair.target_dir, folder / "gemma-4-kit-it")
    shutil.copytree(pair.assistant_dir, folder / "gemma-4-kit-it-assistant")
    picture = Image.fromarray(np.arange(32 * 32 * 3, dtype=np.uint8).reshape(32, 32, 3))
    for name in ("chart.png", "scan.png"):
        picture.save(folder / name)
    soundfile.write(folder / "call.wav", np.sin(np.arange(16000) / 16000 * 2 * np.pi * 440), 16000)
    return folder


def substitute(source: str, tmp_path: Path, media_target: Path | None = None) -> str:
    """The snippet as it runs here (the module docstring's rule)."""
    source = re.sub(r'"google/gemma-4-[\w.-]+?-it-assistant"', repr(MINI_ASSISTANT), source)
    target = '"gemma-mtp-mini"' if media_target is None else repr(str(media_target))
    source = re.sub(r'"google/gemma-4-[\w.-]+?-it"', target, source)
    source = re.sub(r'device="cuda(:\d+)?"', 'device="cpu"', source)
    source = source.replace('dtype="bfloat16"', 'dtype="float32"')
    source = re.sub(r"\b(max_new_tokens|max_tokens)=(\d+)", lambda m: f"{m[1]}={min(int(m[2]), 128)}", source)
    return source.replace('"/tmp/pair"', repr(str(tmp_path / "pair")))


def snippets(page: Path) -> list[tuple[int, str]]:
    """The page's ``python`` code blocks, with the line each starts on."""
    text = page.read_text(encoding="utf-8")
    return [
        (text[: match.start()].count("\n") + 2, match[1])
        for match in re.finditer(r"^```python\n(.*?)^```", text, re.S | re.M)
    ]


def _needed(statement: str) -> str | None:
    for backend in ENVIRONMENTS:
        if f'backend="{backend}"' in statement:
            return backend
    return None


def _statements(source: str) -> list[tuple[int, str]]:
    """The snippet's top-level statements (decorators included), each with the line it starts on."""
    lines = source.splitlines()
    found = []
    for node in ast.parse(source).body:
        first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
        found.append((first, "\n".join(lines[first - 1 : node.end_lineno])))
    return found


def _run(source: str, namespace: dict[str, Any], where: str, line: int = 1) -> None:
    """Run ``source`` as if it stood at ``line`` of the file ``where`` (tracebacks point at the page)."""
    code = compile("\n" * (line - 1) + source, where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    result = eval(code, namespace)  # a coroutine when the snippet awaits at top level
    if asyncio.iscoroutine(result):
        asyncio.run(result)


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_every_snippet_runs_on_the_mini_pair(
    page: Path, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocks = snippets(page)
    if not blocks:
        pytest.skip("no Python snippets")
    media_target = None
    if shows_media(page):
        media = request.getfixturevalue("media_folder")
        monkeypatch.chdir(media)
        media_target = media / "gemma-4-kit-it"
    namespace: dict[str, Any] = {"__name__": "__docs__"}
    _run(GIVEN.get(page.name, ""), namespace, f"{page.name}: given names")
    skipped: list[str] = []
    name = str(page.relative_to(ROOT))
    for line, block in blocks:
        for offset, text in _statements(substitute(block, tmp_path, media_target)):
            at = line + offset - 1
            backend = _needed(text)
            if backend is None:
                _run(text, namespace, name, at)
                continue
            module, promised = ENVIRONMENTS[backend]
            if importlib.util.find_spec(module) is not None:
                skipped.append(f"{name}:{at} (needs a {backend} engine or server)")
                continue
            try:
                _run(text, namespace, name, at)
            except ImportError as error:
                assert str(error).startswith(promised), f"{name}:{at}: {error}"
    if skipped:
        print("not run here:", *skipped, sep="\n  ")


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_no_page_shows_a_temporary_folder(page: Path) -> None:
    """A results page once named the kit pair by the temporary folder it was built in."""
    text = page.read_text(encoding="utf-8")
    for temporary in ("gemma-mtp-kit-", "/tmp/pytest-", "/tmp/tmp"):
        assert temporary not in text, f"{page.name} shows a temporary folder ({temporary}...)"
