"""``redifu serve``: the application under uvicorn."""

from __future__ import annotations

import logging
from typing import Callable

from redifu.predict import Predictor
from redifu.serve.settings import ServeSettings

logger = logging.getLogger(__name__)

__all__ = ["serve"]


def serve(load: Callable[[], Predictor], *, host: str = "127.0.0.1", port: int = 8000,
          settings: ServeSettings | None = None, log_level: str = "info") -> None:
    """Serve :func:`~redifu.serve.app.create_app` until interrupted (Ctrl-C, SIGTERM).

    Raises:
        ImportError: FastAPI or uvicorn is missing (the message names the extra).
        Exception: Whatever ``load`` raised, after the server stopped (a model that cannot be
            loaded ends the server).
    """
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as missing:
        raise ImportError(f"redifu serve needs {missing.name or 'fastapi and uvicorn'}: "
                          "pip install 'redifu[serve]'") from None
    from redifu.serve.app import create_app

    app = create_app(load, settings=settings)
    config = uvicorn.Config(app, host=host, port=port, lifespan="on", log_level=log_level,
                            timeout_graceful_shutdown=10)
    server = uvicorn.Server(config)
    app.state.stop = lambda: setattr(server, "should_exit", True)
    server.run()
    if app.state.load_error is not None:
        raise app.state.load_error
