"""Where identity events go besides WebSocket clients (stdout JSON lines; MQTT later)."""
