"""Installs the OpenAI generation endpoints on a worker app.

Role `both` serves them from the local engine (`install`); another role can serve the same API
from its own token source with `add_openai_routes(app, submit)` (see openai_serving.SubmitFn).
"""

from __future__ import annotations

from aiohttp import web

from pdserve.runtime.serving.chat import chat_handler
from pdserve.runtime.serving.completions import completions_handler
from pdserve.runtime.serving.openai_serving import SubmitFn, local_submit
from pdserve.runtime.serving.server import WorkerState


def add_openai_routes(app: web.Application, submit: SubmitFn) -> None:
    app.router.add_post("/v1/completions", completions_handler(submit))
    app.router.add_post("/v1/chat/completions", chat_handler(submit))


def install(app: web.Application, state: WorkerState) -> None:
    add_openai_routes(app, local_submit)
