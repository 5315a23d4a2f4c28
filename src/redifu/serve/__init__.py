"""``redifu serve``: an HTTP API and a web page for emotion predictions (the ``serve`` extra).

- :mod:`redifu.serve.settings`: :class:`ServeSettings`, the limits and batching options;
- :mod:`redifu.serve.request_body`: a ``POST /predict`` body to checked utterances, one-line
  faults (the row checks of :mod:`redifu.predict.rows`);
- :mod:`redifu.serve.body_limit`: the request-size limit, enforced while the body arrives;
- :mod:`redifu.serve.batching`: :class:`MicroBatcher`, requests that arrive together share a
  forward pass;
- :mod:`redifu.serve.app`: :func:`create_app`, the FastAPI application (routes, lifespan);
- :mod:`redifu.serve.server`: :func:`serve`, the application under uvicorn;
- ``static/``: the page at ``/`` (plain HTML, CSS and JavaScript; no build step, no CDN).

FastAPI and uvicorn are imported where used, so ``import redifu.serve`` works without them.
"""

from redifu.serve.settings import ServeSettings

__all__ = ["ServeSettings"]
