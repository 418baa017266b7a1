"""Every code block of README.md and docs/**/*.md runs as written, and the documentation site builds cleanly.

How a page's fenced code blocks run:

* ``python`` blocks of one page run in order in one shared namespace; ``bash`` blocks run with
  ``bash -euo pipefail``. Both run in one temporary working folder per page, with ``vsekit`` and ``python`` on
  the ``PATH`` resolving to this checkout (its ``src/`` first on ``PYTHONPATH``) and ``OMP_NUM_THREADS=1``
  unless it is set.
* Each block is one test, named by its page and line. A block needs the ones before it on its page: when a test
  runs a block whose predecessors have not run in this process (pytest-xdist sent them to another worker), it
  runs them first. Blocks in any other language (``text``, ``yaml``, ``json``, output) are not run.
* An HTML comment on the line(s) just above a block controls it:

  - ``<!-- docs-test: skip REASON -->``: not run, reported as skipped with the reason (``pytest -ra``);
  - ``<!-- docs-test: slow -->``: marked ``slow``, still run;
  - ``<!-- docs-test: file NAME -->``: the block (of any language, e.g. a YAML config) is written to ``NAME``
    in the page's folder;
  - ``<!-- docs-test: provides PATH -->``: the block makes ``PATH`` (a run folder) and needs no block before
    it. It runs once per test session, and pages that say ``<!-- docs-test: uses PATH -->`` anywhere start with
    a copy of what it made: one tiny trained checkpoint serves every page that evaluates, loads or indexes one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
RUN = {"python": "python", "py": "python", "bash": "bash", "sh": "bash", "shell": "bash"}
NOT_RUN = {"text", "yaml", "json", "toml", "ini", "csv"}  # shown, not run (a yaml block may be a "file")
DIRECTIVE = re.compile(r"^<!--\s*docs-test:\s*(\w+)\s*(.*?)\s*-->$")
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)\s*$")
BLOCK_TIMEOUT = 600


@dataclass
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    directives: dict[str, str] = field(default_factory=dict)

    @property
    def runs(self) -> bool:
        return self.lang in RUN or "file" in self.directives

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


@dataclass
class Page:
    path: Path
    blocks: list[Block]
    uses: list[str]


def is_closing(line: str, marks: str) -> bool:
    """Whether ``line`` closes a block opened with ``marks`` (the same character, at least as many times)."""
    stripped = line.strip()
    return len(stripped) >= len(marks) and set(stripped) == {marks[0]}


def parse_page(path: Path) -> Page:
    """The fenced code blocks of a Markdown page, with the docs-test directives just above each, and the page's
    ``uses`` directives."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    uses: list[str] = []
    pending: dict[str, str] = {}
    i = 0
    while i < len(lines):
        line = lines[i]
        directive = DIRECTIVE.match(line.strip())
        fence = FENCE.match(line)
        if directive:
            kind, arg = directive.groups()
            if kind == "uses":
                uses.append(arg)
            else:
                pending[kind] = arg
        elif fence:
            indent, marks, lang = fence.groups()
            body: list[str] = []
            j = i + 1
            while j < len(lines) and not is_closing(lines[j], marks):
                body.append(lines[j])
                j += 1
            code = textwrap.dedent("\n".join(b[len(indent):] if b.startswith(indent) else b for b in body)) + "\n"
            blocks.append(Block(path, i + 1, lang.lower(), code, pending))
            pending = {}
            i = j
        elif line.strip():
            pending = {}
        i += 1
    return Page(path, blocks, uses)


ALL_PAGES = {page: parse_page(page) for page in PAGES}


def _providers() -> dict[str, Block]:
    found: dict[str, Block] = {}
    for page in ALL_PAGES.values():
        for block in page.blocks:
            if "provides" in block.directives:
                found[block.directives["provides"]] = block
    return found


PROVIDERS = _providers()


# --- running blocks --------------------------------------------------------------------------------------------


def tool_dir(root: Path) -> Path:
    """A folder of wrappers that make ``vsekit`` and ``python`` this checkout's, run with this interpreter."""
    bin_dir = root / "bin"
    if not bin_dir.is_dir():
        bin_dir.mkdir(parents=True)
        python = shlex.quote(sys.executable)
        for name, command in (("vsekit", f"{python} -m vsekit"), ("python", python), ("python3", python)):
            wrapper = bin_dir / name
            wrapper.write_text(f'#!/bin/sh\nexec {command} "$@"\n')
            wrapper.chmod(0o755)
    return bin_dir


def block_env(bin_dir: Path, pycache: Path) -> dict[str, str]:
    env = dict(os.environ)
    if env.pop("PYTHONDONTWRITEBYTECODE", ""):
        # an environment that keeps bytecode out of the source tree would compile torch's ~2,000 modules again in
        # every command of every block (about 10 s of CPU each time): keep the blocks' bytecode in the session's
        # temporary folder instead, so that it is compiled once
        env["PYTHONPYCACHEPREFIX"] = str(pycache)
    env["PATH"] = os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO / "src"), env.get("PYTHONPATH", "")] if p)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["MPLBACKEND"] = "Agg"
    env["PYTHONUNBUFFERED"] = "1"
    temporary = bin_dir.parent / "tmp"  # what a command leaves in its temporary folder (torchrun's) stays in ours
    temporary.mkdir(exist_ok=True)
    env["TMPDIR"] = str(temporary)
    return env


class BlockFailed(Exception):
    pass


class PageRun:
    """One page's working folder, Python namespace and progress in this process."""

    def __init__(self, page: Page, folder: Path, session: Session) -> None:
        self.page = page
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.namespace: dict[str, object] = {"__name__": "__docs__"}
        self.done = 0  # blocks of the page handled so far
        self.failed: Block | None = None
        for path in page.uses:
            if path not in PROVIDERS:
                raise BlockFailed(f"{page.path.name} uses {path}, which no block provides")
            copy_tree(session.provided(path), folder / path)

    def run_through(self, index: int, session: Session) -> None:
        """Run the page's blocks up to and including ``index`` that have not run yet."""
        for block in self.page.blocks[self.done : index + 1]:
            if self.failed is not None:
                pytest.skip(f"an earlier block of the page failed ({self.failed.name})")
            self.done += 1
            if not block.runs or "skip" in block.directives:
                continue
            try:
                if "provides" in block.directives:
                    path = block.directives["provides"]
                    copy_tree(session.provided(path), self.folder / path)
                else:
                    run_block(block, self.folder, self.namespace, session.bin_dir, session.pycache)
            except BaseException:
                self.failed = block
                raise


def copy_tree(source: Path, dest: Path) -> None:
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(source, dest, symlinks=True)


@contextlib.contextmanager
def working_dir(folder: Path, env: dict[str, str]):
    """Run in ``folder`` with ``env`` as the environment and torch on the threads that ``OMP_NUM_THREADS`` gives the
    commands (on a shared machine, more threads than free cores make training many times slower)."""
    import torch

    saved_cwd, saved_env, saved_threads = Path.cwd(), dict(os.environ), torch.get_num_threads()
    os.chdir(folder)
    os.environ.clear()
    os.environ.update(env)
    torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
    try:
        yield
    finally:
        torch.set_num_threads(saved_threads)
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)


def run_block(block: Block, folder: Path, namespace: dict[str, object], bin_dir: Path, pycache: Path) -> None:
    env = block_env(bin_dir, pycache)
    if "file" in block.directives:
        (folder / block.directives["file"]).write_text(block.code, encoding="utf-8")
    elif RUN[block.lang] == "python":
        with working_dir(folder, env):
            try:
                exec(compile(block.code, block.name, "exec"), namespace)  # noqa: S102 - the docs' own examples
            except Exception:
                raise BlockFailed(f"{block.name} (python) failed:\n{block.code}\n{traceback.format_exc()}") from None
    else:
        # in a session of its own, so that whatever the block leaves running (a server it failed to stop, a command
        # cut off by the timeout) is stopped with it; output goes to files, which a process left in the background
        # cannot hold open the way it holds a pipe
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            proc = subprocess.Popen(
                ["bash", "-euo", "pipefail", "-c", block.code], cwd=folder, env=env, stdout=out, stderr=err,
                stdin=subprocess.DEVNULL, text=True, start_new_session=True,
            )  # fmt: skip
            timed_out = False
            try:
                proc.wait(timeout=BLOCK_TIMEOUT)
            except subprocess.TimeoutExpired:
                timed_out = True
                proc.kill()
                proc.wait()
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read(), err.read()
        if timed_out:
            raise BlockFailed(f"{block.name} (bash) ran past {BLOCK_TIMEOUT} s:\n{block.code}\n{stdout}\n{stderr}")
        if proc.returncode != 0:
            raise BlockFailed(
                f"{block.name} (bash) exited with {proc.returncode}:\n{block.code}\n--- stdout\n{stdout[-4000:]}"
                f"\n--- stderr\n{stderr[-4000:]}"
            )


class Session:
    """The pages' runs in this process, and the folders that ``provides`` blocks make: each is made once per test
    session, under a lock that pytest-xdist's workers share."""

    def __init__(self, root: Path, shared: Path) -> None:
        self.root = root
        self.shared = shared
        self.bin_dir = tool_dir(root)
        self.pycache = shared / "docs-pycache"
        self.pages: dict[Path, PageRun] = {}

    def page_run(self, page: Page) -> PageRun:
        if page.path not in self.pages:
            slug = re.sub(r"\W+", "_", str(page.path.relative_to(REPO)))
            self.pages[page.path] = PageRun(page, self.root / "pages" / slug, self)
        return self.pages[page.path]

    def provided(self, path: str) -> Path:
        block = PROVIDERS[path]
        slug = re.sub(r"\W+", "_", path)
        work = self.shared / f"docs-provided-{slug}"
        with open(self.shared / f"docs-provided-{slug}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            failed = work.with_name(work.name + ".failed")
            if failed.is_file():
                raise BlockFailed(f"{block.name}, which provides {path}, failed:\n{failed.read_text()}")
            if not (work / ".done").is_file():
                if work.exists():
                    shutil.rmtree(work)
                work.mkdir(parents=True)
                try:
                    run_block(block, work, {"__name__": "__docs__"}, self.bin_dir, self.pycache)
                    if not (work / path).exists():
                        raise BlockFailed(f"{block.name} says it provides {path}, but made no {path}")
                except BlockFailed as e:
                    failed.write_text(str(e))
                    raise
                (work / ".done").touch()
        return work / path


@pytest.fixture(scope="session")
def docs_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    root = tmp_path_factory.mktemp("docs")
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # the folder xdist workers share
    session = Session(root, shared)
    saved = sys.dont_write_bytecode, sys.pycache_prefix
    if sys.dont_write_bytecode:
        # as for the commands (block_env): the Python blocks' imports in this process (torch._dynamo for the
        # optimizers, matplotlib for the curves) read the bytecode that the commands compiled, or write it there
        sys.dont_write_bytecode, sys.pycache_prefix = False, str(session.pycache)
    try:
        yield session
    finally:
        sys.dont_write_bytecode, sys.pycache_prefix = saved


def _block_params() -> list:
    params = []
    for page in ALL_PAGES.values():
        for index, block in enumerate(page.blocks):
            if not block.runs:
                continue
            marks = [pytest.mark.xdist_group(str(page.path.relative_to(REPO)))]
            if "slow" in block.directives:
                marks.append(pytest.mark.slow)
            params.append(pytest.param(page.path, index, id=block.name, marks=marks))
    return params


@pytest.mark.parametrize(("page_path", "index"), _block_params())
def test_code_block(docs_session: Session, page_path: Path, index: int) -> None:
    page = ALL_PAGES[page_path]
    block = page.blocks[index]
    if "skip" in block.directives:
        pytest.skip(f"{block.name}: {block.directives['skip']}")
    failure = None
    try:
        docs_session.page_run(page).run_through(index, docs_session)
    except BlockFailed as e:
        failure = str(e)
    if failure is not None:
        pytest.fail(failure, pytrace=False)


# --- the blocks and directives themselves ----------------------------------------------------------------------


KNOWN_DIRECTIVES = {"skip", "slow", "file", "provides"}


def test_every_block_says_whether_it_runs() -> None:
    """A block without a language, or in one the runner does not know, would be silently left out: name it
    (``text`` for output and command synopses)."""
    unknown = [
        f"{b.name} ```{b.lang}" for p in ALL_PAGES.values() for b in p.blocks if b.lang not in RUN and b.lang not in NOT_RUN
    ]
    assert not unknown, "code blocks in an unknown language (use python, bash, text, yaml, ...):\n" + "\n".join(unknown)


def test_directives_are_known_and_complete() -> None:
    problems = []
    for page in ALL_PAGES.values():
        for block in page.blocks:
            for kind, arg in block.directives.items():
                if kind not in KNOWN_DIRECTIVES:
                    problems.append(f"{block.name}: unknown directive {kind!r}")
                elif kind in {"skip", "file", "provides"} and not arg:
                    problems.append(f"{block.name}: '{kind}' needs an argument (a reason, a file name, a path)")
                elif kind == "provides" and not block.runs:
                    problems.append(f"{block.name}: a 'provides' block must run")
            if "skip" in block.directives and not block.runs:
                problems.append(f"{block.name}: a '{block.lang}' block never runs, so it needs no skip")
        for path in page.uses:
            if path not in PROVIDERS:
                problems.append(f"{page.path.name}: uses {path}, which no block provides")
    assert not problems, "\n".join(problems)


def test_readme_links_exist() -> None:
    """The README's relative links (into docs/, to images) point at files of the repository."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    missing = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        if not (REPO / target.split("#")[0]).exists():
            missing.append(target)
    assert not missing, f"README links to missing files: {missing}"


def test_parser_reads_directives_and_indented_blocks(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    page.write_text(
        "text\n\n<!-- docs-test: skip needs a GPU -->\n```bash\nnvidia-smi\n```\n\n- item:\n\n  ```python\n  x = 1\n  ```\n"
        "\n<!-- docs-test: uses runs/demo -->\n\n```text\nout\n```\n"
    )
    parsed = parse_page(page)
    assert [(b.lang, b.code, b.directives) for b in parsed.blocks] == [
        ("bash", "nvidia-smi\n", {"skip": "needs a GPU"}),
        ("python", "x = 1\n", {}),
        ("text", "out\n", {}),
    ]
    assert parsed.uses == ["runs/demo"]


# --- the site ----------------------------------------------------------------------------------------------------


def test_site_builds_strictly_and_offline(tmp_path: Path) -> None:
    """``mkdocs build --strict`` passes (broken links and anchors, docstrings the API reference cannot read, pages
    left out of the nav all fail it), and the built pages load nothing from other hosts."""
    pytest.importorskip("mkdocstrings_handlers.python", reason="needs the dev extra (mkdocs-material, mkdocstrings)")
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-f", str(REPO / "mkdocs.yml"), "-d", str(site)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    remote = set()
    for html in site.rglob("*.html"):
        text = html.read_text(encoding="utf-8")
        remote |= set(re.findall(r"""<(?:script|link|img|iframe)\b[^>]*?\b(?:src|href)=["']((?:https?:)?//[^"']+)""", text))
    assert not remote, f"the site loads resources from elsewhere: {sorted(remote)}"
    assert (site / "reference" / "index.html").is_file()
    assert "vsekit.load_config" in (site / "reference" / "index.html").read_text(encoding="utf-8")

