"""The daemon's HTTP side: REST API (``/api/v1``), web page (``/``), ``/metrics``, health.

:func:`voiceid.http.api.create_app` builds the FastAPI application for a
:class:`~voiceid.runtime.daemon.Daemon`; :func:`voiceid.http.server.serve_http` serves it
with uvicorn inside the daemon's event loop. See ``docs/rest.md``.
"""
