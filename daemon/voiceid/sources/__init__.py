"""Audio sources and event sinks of the daemon: the WebSocket server (``/stream``,
``/events``) and its sans-I/O protocol (:mod:`voiceid.sources.protocol`)."""
