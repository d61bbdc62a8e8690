"""MkDocs hook: adds the generated pages to the site when it is built.

The reference pages (config keys, CLI, plugins, API) and the constants page are produced by
`experiments.docs_gen` from the code itself at build time, so they are never stored and cannot
drift; tests/test_docs.py checks the same functions. A hook (a plain Python file named under
``hooks:`` in mkdocs.yml) needs no plugin package beyond MkDocs.
"""
from __future__ import annotations

import sys
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:          # build from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

API_INDEX = "reference/api/index.md"


def _docs_gen():
    from experiments import docs_gen

    return docs_gen


def on_config(config):
    """Expand the nav entry of the API index into one page per public module."""
    modules = _docs_gen().api_modules()
    pages = [API_INDEX] + [{name: f"reference/api/{name}.md"} for name in modules]

    def expand(items) -> None:
        for item in items or []:
            if not isinstance(item, dict):
                continue
            for title, value in item.items():
                if value == API_INDEX:
                    item[title] = pages
                elif isinstance(value, list):
                    expand(value)

    expand(config["nav"])
    return config


def on_files(files, config):
    """Add every generated page to the site's files."""
    mkdocstrings = "mkdocstrings" in config["plugins"]
    for path, content in _docs_gen().pages(mkdocstrings=mkdocstrings).items():
        files.append(File.generated(config, path, content=content))
    return files
