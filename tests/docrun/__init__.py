"""Executable documentation: every runnable fenced block of README.md and
docs/*.md (and the public API's docstring examples) is a test.

How a page is run, and how to write one that runs, is in
docs/writing-docs.md. The pieces: :mod:`.ports` (the page's ports mapped to
free ones), :mod:`.shell` (shell blocks, long-running commands in the
background), :mod:`.session` (one page's directory, environment and
processes), :mod:`.evaluators` (python, sh and toml blocks), :mod:`.collect`
(the Sybil configuration the root conftest.py installs).
"""
